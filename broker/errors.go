package broker

import (
	"errors"
	"fmt"
	"time"
)

// Code classifies a domain error. Each code maps to exactly one HTTP status
// in the HTTP layer's table.
type Code string

const (
	CodeInvalid         Code = "invalid_request"   // 400: the caller sent something malformed
	CodeUnauthenticated Code = "unauthenticated"   // 401: identity missing or not verifiable
	CodeForbidden       Code = "forbidden"         // 403: identity fine, policy says no
	CodeNotFound        Code = "not_found"         // 404
	CodeConflict        Code = "conflict"          // 409: the resource is not in a state that allows this
	CodeTooLarge        Code = "too_large"         // 413
	CodeUnsupportedType Code = "unsupported_media" // 415
	CodeUnavailable     Code = "unavailable"       // 503: a dependency (Redis, IdP, Vault) is down
	CodeInternal        Code = "internal"          // 500

	// CodeUnsupportedTokenType (400) is RFC 7009's answer for a token Valet
	// recognises but cannot revoke.
	CodeUnsupportedTokenType Code = "unsupported_token_type"
	// CodeTooManyRequests (429): the caller holds as much of a capped
	// resource as it may, or is throttled; Error.RetryAfter, when set,
	// becomes the Retry-After header.
	CodeTooManyRequests Code = "too_many_requests"
)

// Error is the one error type of the domain. Message is safe to show to the
// caller; Err carries the detail for logs and is never sent over the wire.
type Error struct {
	Code    Code
	Message string
	// Rule names the policy rule, budget or control that denied a request,
	// where naming it leaks nothing.
	Rule string
	// Field points at the part of the request that was wrong (for example
	// "tools[2]"), where there is one.
	Field string
	Err   error
	// RetryAfter, when set, is sent as the Retry-After header.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Message, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf builds an Error with a formatted, caller-safe message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the code of err, or CodeInternal for anything that is not
// an *Error.
func ErrorCode(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// Sentinel causes that adapters wrap so the Service can classify them.
var (
	// ErrNotFound: the ledger has no such record.
	ErrNotFound = errors.New("not found")
	// ErrUnavailable: a dependency could not be reached in time.
	ErrUnavailable = errors.New("dependency unavailable")
	// ErrNotActive: the task or credential has already ended.
	ErrNotActive = errors.New("not active")
	// ErrConflict: the record changed since it was read (a concurrent
	// renewal); nothing was written.
	ErrConflict = errors.New("changed concurrently")
)

// Unauthenticated is the fixed answer to any identity failure: the reason
// goes to the log, never to the caller.
func Unauthenticated(err error) *Error {
	return &Error{Code: CodeUnauthenticated, Message: "unable to verify bearer token", Err: err}
}

// Unavailable wraps a dependency failure in the fixed 503 answer.
func Unavailable(what string, err error) *Error {
	return &Error{Code: CodeUnavailable, Message: what + " is unavailable; nothing was issued", Err: err}
}

// Throttled is the 429 answer to a client (or approver) that must wait
// before its next authentication attempt; it names no client id.
func Throttled(wait time.Duration) *Error {
	return &Error{Code: CodeTooManyRequests, RetryAfter: wait,
		Message: fmt.Sprintf("too many failed client authentications; retry after %d s", int((wait+time.Second-1)/time.Second))}
}

// maxQuotedLen is how much of an untrusted value an error or log line quotes.
const maxQuotedLen = 128

// QuoteUntrusted renders an untrusted value for an error message, truncated.
func QuoteUntrusted(s string) string {
	if len(s) > maxQuotedLen {
		return fmt.Sprintf("%q...", s[:maxQuotedLen])
	}
	return fmt.Sprintf("%q", s)
}

// InvalidField is the 400 of a client-sent value that is wrong: field names
// it (tools[3], ttl_seconds), the message says what is wrong.
func InvalidField(field, format string, args ...any) *Error {
	e := Errorf(CodeInvalid, format, args...)
	e.Field = field
	return e
}

// Limits on the tools and lifetime a client may ask for: a declaration's
// (package wire) and a token exchange's (package delegation).
const (
	MaxTools    = 256
	MaxToolName = 128
	MaxTTL      = 24 * time.Hour
)
