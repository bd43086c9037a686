package broker

import (
	"context"
)

// RFC 7009 section 2.1 token_type_hint values Valet knows. Valet issues no
// refresh tokens; the hint is honoured as the order of the search, which
// always extends to every type Valet can revoke (section 2.1: "If the
// server is unable to locate the token using the given hint, it MUST
// extend its search across all of its supported token types").
const (
	HintAccessToken  = "access_token"
	HintRefreshToken = "refresh_token"
	// HintActionToken names Valet's single-use action tokens.
	HintActionToken = "action_token"
	maxHintLen      = 64
)

// TokenRecognizer is implemented by an Issuer whose credentials Valet
// mints but cannot revoke one at a time through RFC 7009 (they end with
// their task). Recognizes must not call out: it only looks at raw.
type TokenRecognizer interface {
	Recognizes(raw string) bool
}

// ActionRevoker burns the single-use action tokens of sensitive tools
// (package stepup) for RevokeToken. RevokeAction reports whether raw is an
// action token Valet issued; when it is, a nil error means it can never
// be consumed (burning a used or burnt token succeeds), and an error is a
// *Error (503 when a store failed). It must be safe for concurrent use.
type ActionRevoker interface {
	RevokeAction(ctx context.Context, raw, actor string) (found bool, err error)
}

// RevokeToken implements RFC 7009 for every token type Valet can revoke:
// a task token revokes its task (Revoke), an action token is burnt so it
// can never be consumed. A token Valet recognises but cannot revoke (an
// identity token of a trusted issuer, a credential that ends only with its
// task) is an unsupported_token_type error, never a false success; any
// other token is invalid and, as the RFC asks, answers success.
func (s *Service) RevokeToken(ctx context.Context, raw, hint, actor string) error {
	if len(hint) > maxHintLen {
		return InvalidField("token_type_hint", "token_type_hint must be at most %d bytes", maxHintLen)
	}
	task := func() (bool, error) {
		if _, err := s.tokens.Verify(raw); err != nil {
			return false, nil
		}
		return true, s.Revoke(ctx, raw, actor)
	}
	action := func() (bool, error) {
		if s.actions == nil {
			return false, nil // no action tokens: raw cannot be one
		}
		return s.actions.RevokeAction(ctx, raw, actor)
	}
	order := []func() (bool, error){task, action}
	if hint == HintActionToken {
		order = []func() (bool, error){action, task}
	}
	for _, try := range order {
		if found, err := try(); found || err != nil {
			return err
		}
	}
	for _, is := range s.extra {
		if r, ok := is.(TokenRecognizer); ok && r.Recognizes(raw) {
			return &Error{Code: CodeUnsupportedTokenType, Field: "token",
				Message: "this " + string(is.Kind()) + " credential cannot be revoked by itself: revoke (or complete) the task that holds it"}
		}
	}
	if _, err := s.identity.Authenticate(ctx, raw); err == nil {
		return &Error{Code: CodeUnsupportedTokenType, Field: "token",
			Message: "identity tokens are issued by the identity provider, not Valet: revoke them there"}
	}
	return nil
}
