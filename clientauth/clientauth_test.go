package clientauth

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/throttle"
)

// TestRuleAdmits guards issue 9 #7: only a principal of the
// rule's issuer, with the rule's audience among its aud values, and the
// rule's subject or claim values is an introspection client; an agent of
// the same issuer and audience is not.
func TestRuleAdmits(t *testing.T) {
	tool := broker.Principal{Issuer: "k8s", Subject: "system:serviceaccount:tools:kb", Claims: map[string]any{
		"aud": []any{"valet", "other"}, "azp": "kb-server"}}
	agent := broker.Principal{Issuer: "k8s", Subject: "agent-a", Claims: map[string]any{"aud": "valet"}}
	bySubject := Rule{Issuer: "k8s", Audience: "valet", Subjects: []string{"system:serviceaccount:tools:kb"}}
	byClaim := Rule{Issuer: "k8s", Audience: "valet", Claims: map[string]string{"azp": "kb-server"}}
	for _, tc := range []struct {
		name string
		rule Rule
		p    broker.Principal
		want bool
	}{
		{"tool server by subject", bySubject, tool, true},
		{"tool server by claim", byClaim, tool, true},
		{"agent of the same issuer and audience", bySubject, agent, false},
		{"agent, claim rule", byClaim, agent, false},
		{"other issuer", bySubject, broker.Principal{Issuer: "dev", Subject: tool.Subject, Claims: tool.Claims}, false},
		{"other audience", Rule{Issuer: "k8s", Audience: "valet-introspect", Subjects: bySubject.Subjects}, tool, false},
		{"claim of another type", byClaim, broker.Principal{Issuer: "k8s", Subject: "x", Claims: map[string]any{"aud": "valet", "azp": []any{"kb-server"}}}, false},
		{"rule without subject rule admits nobody", Rule{Issuer: "k8s", Audience: "valet"}, agent, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.rule.admits(tc.p); got != tc.want {
				t.Fatalf("admits = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestRuleValidate: New refuses a rule every agent of
// the issuer satisfies.
func TestRuleValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule Rule
		want string
	}{
		{"issuer and audience only", Rule{Issuer: "k8s", Audience: "valet"}, "subjects or claims are required"},
		{"no audience", Rule{Issuer: "k8s", Subjects: []string{"svc"}}, "audience is required"},
		{"no issuer", Rule{Audience: "valet", Subjects: []string{"svc"}}, "issuer is required"},
		{"empty subject", Rule{Issuer: "k8s", Audience: "valet", Subjects: []string{" "}}, "subjects has an empty value"},
		{"empty claim value", Rule{Issuer: "k8s", Audience: "valet", Claims: map[string]string{"azp": ""}}, "claims has an empty"},
		{"valid", Rule{Issuer: "k8s", Audience: "valet", Subjects: []string{"svc"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.rule.validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("validate = %v, want %q", err, tc.want)
			}
		})
	}
}

// identities is an Identity that knows one token and answers any other
// with the fixed 401.
type identities map[string]broker.Principal

func (ids identities) Authenticate(_ context.Context, raw string) (broker.Principal, error) {
	if p, ok := ids[raw]; ok {
		return p, nil
	}
	return broker.Principal{}, broker.Unauthenticated(errors.New("unknown token"))
}

// TestAuthorize: a client secret names the client; a wrong one is a 401
// saying the client credentials were wrong (issue 10), never the identity
// check's message; an identity token is admitted only by a rule; a bad
// identity token keeps the fixed message.
func TestAuthorize(t *testing.T) {
	tool := broker.Principal{Issuer: "k8s", Subject: "kb", Claims: map[string]any{"aud": "valet"}}
	agent := broker.Principal{Issuer: "k8s", Subject: "agent-a", Claims: map[string]any{"aud": "valet"}}
	a, err := New(Config{
		Clients:  []Client{{ID: "ts", SecretSHA256: sha256.Sum256([]byte("ts-secret"))}},
		Rules:    []Rule{{Issuer: "k8s", Audience: "valet", Subjects: []string{"kb"}}},
		Identity: identities{"tool-token": tool, "agent-token": agent},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name                     string
		id, secret, bearer, want string
		code                     broker.Code
		message                  string
	}{
		{name: "client secret", id: "ts", secret: "ts-secret", want: "client:ts"},
		{name: "wrong secret", id: "ts", secret: "guess", code: broker.CodeUnauthenticated, message: "invalid client credentials"},
		{name: "unknown client", id: "nobody", secret: "ts-secret", code: broker.CodeUnauthenticated, message: "invalid client credentials"},
		{name: "secret wins over bearer", id: "ts", secret: "guess", bearer: "tool-token", code: broker.CodeUnauthenticated, message: "invalid client credentials"},
		{name: "tool server's identity token", bearer: "tool-token", want: "k8s:kb"},
		{name: "agent's identity token", bearer: "agent-token", code: broker.CodeForbidden, message: "this identity may not introspect or revoke tokens"},
		{name: "bad identity token", bearer: "forged", code: broker.CodeUnauthenticated, message: "unable to verify bearer token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Authorize(context.Background(), tc.id, tc.secret, tc.bearer)
			if tc.code == "" {
				if err != nil || got != tc.want {
					t.Fatalf("Authorize = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != tc.code || e.Message != tc.message || got != "" {
				t.Fatalf("Authorize = %q, %v; want %s %q", got, err, tc.code, tc.message)
			}
		})
	}
}

// TestAuthorizeThrottle: after throttle.FailuresPerWindow wrong secrets for
// one client id, every attempt with it (the right secret too) is a 429
// until the window passes on the Authorizer's clock; another id is not
// affected.
func TestAuthorizeThrottle(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	a, err := New(Config{Clients: []Client{{ID: "ts", SecretSHA256: sha256.Sum256([]byte("ts-secret"))}},
		Identity: identities{}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i := range throttle.FailuresPerWindow {
		if _, err := a.Authorize(ctx, "ts", "guess", ""); broker.ErrorCode(err) != broker.CodeUnauthenticated {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	var e *broker.Error
	if _, err := a.Authorize(ctx, "ts", "ts-secret", ""); !errors.As(err, &e) || e.Code != broker.CodeTooManyRequests || e.RetryAfter <= 0 {
		t.Fatalf("right secret while throttled: %v", err)
	}
	if _, err := a.Authorize(ctx, "other", "x", ""); broker.ErrorCode(err) != broker.CodeUnauthenticated {
		t.Fatalf("another client id: %v", err)
	}
	now = now.Add(throttle.Window + time.Second)
	if got, err := a.Authorize(ctx, "ts", "ts-secret", ""); err != nil || got != "client:ts" {
		t.Fatalf("after the window: %q %v", got, err)
	}
}

// TestNewRefuses: no identity, or a rule every agent of its issuer
// satisfies, is refused at start.
func TestNewRefuses(t *testing.T) {
	if _, err := New(Config{}); err == nil || err.Error() != "clientauth: identity cannot be nil" {
		t.Fatalf("no identity: %v", err)
	}
	_, err := New(Config{Identity: identities{}, Rules: []Rule{{Issuer: "k8s", Audience: "valet"}}})
	if err == nil || !strings.Contains(err.Error(), "introspection rule 0: subjects or claims are required") {
		t.Fatalf("issuer-and-audience rule: %v", err)
	}
}
