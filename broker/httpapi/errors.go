package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/requestid"
)

const codeMethodNotAllowed broker.Code = "method_not_allowed"

// statusOf is the one table from domain error codes to HTTP statuses.
var statusOf = map[broker.Code]int{
	broker.CodeInvalid:         http.StatusBadRequest,
	broker.CodeUnauthenticated: http.StatusUnauthorized,
	broker.CodeForbidden:       http.StatusForbidden,
	broker.CodeNotFound:        http.StatusNotFound,
	codeMethodNotAllowed:       http.StatusMethodNotAllowed,
	broker.CodeConflict:        http.StatusConflict,
	broker.CodeTooLarge:        http.StatusRequestEntityTooLarge,
	broker.CodeUnsupportedType: http.StatusUnsupportedMediaType,
	broker.CodeUnavailable:     http.StatusServiceUnavailable,
	broker.CodeInternal:        http.StatusInternalServerError,
	// RFC 7009 section 2.2.1 and the client-secret throttle.
	broker.CodeUnsupportedTokenType: http.StatusBadRequest,
	broker.CodeTooManyRequests:      http.StatusTooManyRequests,
}

// errorBody is the one error shape of the API (Error in openapi.yaml).
type errorBody struct {
	Error     broker.Code `json:"error"`
	Message   string      `json:"message"`
	Rule      string      `json:"rule,omitempty"`
	Field     string      `json:"field,omitempty"`
	RequestID string      `json:"request_id,omitempty"`
}

// writeError answers with err's code and caller-safe message; the cause
// goes to the log only, at Warn for client errors and Error for ours.
func (a *api) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var e *broker.Error
	if !errors.As(err, &e) {
		e = &broker.Error{Code: broker.CodeInternal, Message: "internal error", Err: err}
	}
	if errors.Is(err, context.DeadlineExceeded) && e.Code == broker.CodeInternal {
		e = &broker.Error{Code: broker.CodeUnavailable, Message: "the request timed out", Err: err}
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		e = &broker.Error{Code: broker.CodeTooLarge, Message: "request body is larger than the limit", Err: err}
	}
	// Messages, rules and fields can quote what a client sent: bound them
	// for the body and the log alike.
	msg, rule, field := broker.Bound(e.Message, broker.MaxAuditString), broker.Bound(e.Rule, broker.MaxAuditString), broker.Bound(e.Field, broker.MaxAuditString)
	status, ok := statusOf[e.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	level := slog.LevelWarn
	if status >= 500 {
		level = slog.LevelError
	}
	attrs := []slog.Attr{slog.String("request_id", requestid.From(r.Context())), slog.String("method", broker.Bound(r.Method, broker.MaxLoggedPath)),
		slog.String("path", boundedPath(r)), slog.Int("status", status), slog.String("code", string(e.Code)),
		slog.String("message", msg)}
	if rule != "" {
		attrs = append(attrs, slog.String("rule", rule))
	}
	if e.Err != nil {
		attrs = append(attrs, slog.String("cause", broker.Bound(e.Err.Error(), broker.MaxAuditString)))
	}
	a.log.LogAttrs(r.Context(), level, "request failed", attrs...)
	switch status {
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "1")
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "5")
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	writeJSON(w, status, errorBody{Error: e.Code, Message: msg, Rule: rule, Field: field, RequestID: requestid.From(r.Context())})
}
