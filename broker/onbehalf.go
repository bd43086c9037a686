package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/valet-dev/valet/policy"
)

// On behalf of a user: a declaration may carry the end user's identity
// token (subject_token). Valet verifies it against the trusted issuers, the
// template's users block must admit the user, and the task's tokens then
// name the user as sub and the agent in act (RFC 8693 section 4.1), so a
// tool server sees both and policy can use both.

// authenticateUser verifies a declaration's subject_token with the same
// Authenticator as agents (which refuses Valet's own task tokens). Every
// failure is the fixed 401 (503 when the issuer is unreachable), never a
// fallback to the agent acting as itself.
func (s *Service) authenticateUser(ctx context.Context, raw string) (Principal, error) {
	u, err := s.identity.Authenticate(ctx, raw)
	if err == nil && u.Subject == "" {
		err = errors.New("subject token names no subject")
	}
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return Principal{}, Unavailable("the identity provider", err)
		}
		s.log.WarnContext(ctx, "subject token rejected", "token_sha256", TokenHash(raw), "reason", err.Error())
		return Principal{}, Unauthenticated(fmt.Errorf("subject token: %w", err))
	}
	return u, nil
}

// checkUser is decide's users rule: a declaration without a user passes;
// one with a user needs the template to admit that user.
func checkUser(tmpl *policy.Template, u *Principal) error {
	if u == nil {
		return nil
	}
	ok, err := tmpl.AdmitsUser(u.PolicyIdentity())
	if ok {
		return nil
	}
	why := fmt.Errorf("user %s/%s not admitted: %v", u.Issuer, u.Subject, err)
	if len(tmpl.Users) == 0 {
		why = errors.New("template has no users block")
	}
	return &Error{Code: CodeForbidden, Message: fmt.Sprintf("template %q does not allow acting on behalf of this user", tmpl.Name),
		Rule: "users", Field: "subject_token", Err: why}
}

// actOnBehalf makes task a task of user u: its tokens' sub is the user and
// its act chain names the agent.
func actOnBehalf(task *Task, u *Principal) {
	if u == nil {
		return
	}
	task.Subject, task.SubjectIssuer = u.Subject, u.Issuer
	task.Act = []string{task.Agent}
}

// onBehalfDetail adds the user's ids (never the token) to an audit event's
// detail.
func onBehalfDetail(detail map[string]any, task Task) {
	if task.SubjectIssuer == "" {
		return
	}
	detail["subject"], detail["subject_issuer"], detail["act"] = task.Subject, task.SubjectIssuer, task.Act
}
