package stepup

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/throttle"
)

// unused stands for a dependency a test's path must never call: any call
// panics on the nil interface it embeds.
type (
	unusedCore    struct{ Core }
	unusedTokens  struct{ broker.TaskTokens }
	unusedAuditor struct{ broker.Auditor }
)

func TestNewRejectsMissingDependencies(t *testing.T) {
	_, err := New(Config{})
	if err == nil || !strings.Contains(err.Error(), "core, task token verifier, auditor cannot be nil") {
		t.Fatalf("New(Config{}) = %v, want every missing dependency named", err)
	}
	for name, a := range map[string]ApprovalConfig{
		"negative timeout": {Timeout: -time.Second},
		"negative cap":     {MaxPendingPerTask: -1},
	} {
		if _, err := New(Config{Core: unusedCore{}, Tokens: unusedTokens{}, Auditor: unusedAuditor{}, Approvals: a}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	s, err := New(Config{Core: unusedCore{}, Tokens: unusedTokens{}, Auditor: unusedAuditor{}, ActionTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if s.actionTTL != MaxActionTTL || s.approvals.Timeout != DefaultApprovalTimeout ||
		s.approvals.MaxPendingPerTask != DefaultMaxPendingPerTask || s.approvals.MaxPendingPerAgent != DefaultMaxPendingPerAgent {
		t.Fatalf("defaults: ttl %s, approvals %+v", s.actionTTL, s.approvals)
	}
}

// TestApproverThrottle: an approver client id that fails
// throttle.FailuresPerWindow times waits out the window, with the right
// secret too (else the 429 would be an oracle); success then resets it.
func TestApproverThrottle(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s, err := New(Config{Core: unusedCore{}, Tokens: unusedTokens{}, Auditor: unusedAuditor{}, Now: func() time.Time { return now },
		Approvals: ApprovalConfig{Clients: []clientauth.Client{{ID: "alice", SecretSHA256: sha256.Sum256([]byte("alice-secret"))}}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if who, err := s.AuthorizeApprover(ctx, "alice", "alice-secret"); err != nil || who != "approver:alice" {
		t.Fatalf("right secret: %q %v", who, err)
	}
	for range throttle.FailuresPerWindow {
		if _, err := s.AuthorizeApprover(ctx, "alice", "wrong"); broker.ErrorCode(err) != broker.CodeUnauthenticated {
			t.Fatalf("wrong secret: %v, want 401", err)
		}
	}
	if _, err := s.AuthorizeApprover(ctx, "alice", "alice-secret"); broker.ErrorCode(err) != broker.CodeTooManyRequests {
		t.Fatalf("right secret after %d failures: %v, want 429", throttle.FailuresPerWindow, err)
	}
	now = now.Add(throttle.Window)
	if _, err := s.AuthorizeApprover(ctx, "alice", "alice-secret"); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if _, err := s.AuthorizeApprover(ctx, "", ""); broker.ErrorCode(err) != broker.CodeUnauthenticated {
		t.Fatalf("no credentials: %v, want 401", err)
	}
}

func TestApprovalQueryValidate(t *testing.T) {
	for _, tc := range []struct {
		name      string
		q         ApprovalQuery
		wantField string
	}{
		{"defaults", ApprovalQuery{}, ""},
		{"issued", ApprovalQuery{State: ApprovalIssued, Limit: MaxApprovalPage}, ""},
		{"unknown state", ApprovalQuery{State: "lost"}, "state"},
		{"long agent", ApprovalQuery{Agent: strings.Repeat("a", 257)}, "agent"},
		{"limit over max", ApprovalQuery{Limit: MaxApprovalPage + 1}, "limit"},
		{"negative limit", ApprovalQuery{Limit: -1}, "limit"},
		{"forged cursor", ApprovalQuery{Cursor: "bm90LWEtY3Vyc29y"}, "cursor"},
		{"cursor Valet gave", ApprovalQuery{Cursor: encodeApprovalCursor(Approval{ID: "apr_x", CreatedAt: time.Unix(5, 0)})}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.q.Validate()
			if tc.wantField == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tc.q.State == "" || tc.q.Limit == 0 {
					t.Fatalf("defaults not filled in: %+v", tc.q)
				}
				return
			}
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != broker.CodeInvalid || e.Field != tc.wantField {
				t.Fatalf("err = %#v, want a 400 naming %s", err, tc.wantField)
			}
		})
	}
}
