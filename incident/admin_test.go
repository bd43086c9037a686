package incident

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/requestid"
	"github.com/valet-dev/valet/policy"
)

// admins authenticates an admin token by its text: "tok-<subject>" of the
// groups listed in groups.
type admins map[string][]any

func (a admins) Authenticate(_ context.Context, raw string) (broker.Principal, error) {
	sub, ok := strings.CutPrefix(raw, "tok-")
	groups, known := a[sub]
	if !ok || !known {
		return broker.Principal{}, errors.New("signature invalid")
	}
	return broker.Principal{Issuer: "corp", Subject: sub, Claims: map[string]any{"groups": groups}}, nil
}

// trail records audit events; with fail set, every write fails.
type trail struct {
	mu     sync.Mutex
	events []broker.Event
	fail   bool
}

func (t *trail) Record(_ context.Context, e broker.Event) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fail {
		return errors.New("disk full")
	}
	t.events = append(t.events, e)
	return nil
}

func (t *trail) last() broker.Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.events) == 0 {
		return broker.Event{}
	}
	return t.events[len(t.events)-1]
}

// core builds audit events as broker.Service does; it ends no task.
type core struct{ now func() time.Time }

func (c core) TaskEvent(ctx context.Context, typ, actor string, t broker.Task) broker.Event {
	return broker.Event{Time: c.now().UTC(), Type: typ, RequestID: requestid.From(ctx), Actor: actor, Issuer: t.Issuer, TaskID: t.ID, Template: t.Template}
}

func (core) End(context.Context, string, broker.State, string, string) (broker.Task, []broker.Credential, error) {
	return broker.Task{}, nil, errors.New("not in this test")
}

func (core) EndMany(context.Context, []string, broker.State, string, string) ([]broker.EndResult, error) {
	return nil, errors.New("not in this test")
}

func (core) Templates() *policy.Set { return nil }

// untouched are the stores Authorize must not use: any call panics. (Not
// revocation's memory ledger: revocation imports incident for the job
// store's types.)
type untouched struct {
	broker.Ledger
	broker.ControlStore
	JobStore
	broker.EpochStore
	TimelineReader
}

var testRoles = map[string]string{
	"viewer":    `"viewers" in claims.groups`,
	"responder": `"responders" in claims.groups`,
	"admin":     `"admins" in claims.groups`,
}

func newTestAdmin(t *testing.T, audit *trail) *Admin {
	t.Helper()
	now := func() time.Time { return time.Unix(1_800_000_000, 0) }
	var st untouched
	a, err := NewAdmin(Config{
		Identity: admins{"vera": {"viewers"}, "rita": {"responders"}, "ada": {"admins", "viewers"}, "nobody": {}},
		Roles:    testRoles, Core: core{now}, Ledger: st, Auditor: audit,
		Controls: st, Jobs: st, Epochs: st, Timeline: st, Now: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAuthorize: the highest role whose rule holds is the admin's; a role
// below the one needed is 403 (rule role), a bad token 401, and every
// attempt is audited as admin.<action> with its outcome.
func TestAuthorize(t *testing.T) {
	for _, c := range []struct {
		name, bearer string
		need         Role
		wantCode     broker.Code
		wantRole     Role
		wantOutcome  string
	}{
		{"viewer reads", "tok-vera", RoleViewer, "", RoleViewer, "allowed"},
		{"viewer revokes", "tok-vera", RoleResponder, broker.CodeForbidden, RoleNone, "denied"},
		{"responder revokes", "tok-rita", RoleResponder, "", RoleResponder, "allowed"},
		{"the highest role wins", "tok-ada", RoleResponder, "", RoleAdmin, "allowed"},
		{"no role", "tok-nobody", RoleViewer, broker.CodeForbidden, RoleNone, "denied"},
		{"bad token", "tok-mallory", RoleViewer, broker.CodeUnauthenticated, RoleNone, "denied"},
		{"no token", "", RoleViewer, broker.CodeUnauthenticated, RoleNone, "denied"},
	} {
		t.Run(c.name, func(t *testing.T) {
			audit := &trail{}
			p, err := newTestAdmin(t, audit).Authorize(context.Background(), c.bearer, c.need, "revoke")
			if broker.ErrorCode(err) != c.wantCode && !(c.wantCode == "" && err == nil) {
				t.Fatalf("err = %v, want code %q", err, c.wantCode)
			}
			if p.Role != c.wantRole {
				t.Fatalf("role = %s, want %s", p.Role, c.wantRole)
			}
			ev := audit.last()
			if ev.Type != "admin.revoke" || ev.Outcome != c.wantOutcome || ev.Detail["required_role"] != c.need.String() {
				t.Fatalf("audit event %+v", ev)
			}
			if c.wantCode == broker.CodeForbidden {
				var e *broker.Error
				if !errors.As(err, &e) || e.Rule != "role" || e.Message != "this action needs the "+c.need.String()+" role" {
					t.Fatalf("denial %#v", err)
				}
			}
			if c.bearer != "" && strings.Contains(ev.Reason+ev.Actor, c.bearer) {
				t.Fatalf("the audit event echoes the token: %+v", ev)
			}
		})
	}
}

// TestAuthorizeFailsClosedOnAudit: an allowed admin whose audit write
// fails is refused with 503 (no audit, no action).
func TestAuthorizeFailsClosedOnAudit(t *testing.T) {
	a := newTestAdmin(t, &trail{fail: true})
	if _, err := a.Authorize(context.Background(), "tok-rita", RoleResponder, "revoke"); broker.ErrorCode(err) != broker.CodeUnavailable {
		t.Fatalf("err = %v, want 503", err)
	}
}

// TestNewAdminChecksConfig: missing dependencies are named together; a
// role that does not exist or a rule that does not compile is refused.
func TestNewAdminChecksConfig(t *testing.T) {
	if _, err := NewAdmin(Config{}); err == nil || err.Error() != "admin: identity, core, ledger, auditor, controls, jobs, epochs, timeline cannot be nil" {
		t.Fatalf("empty config: %v", err)
	}
	now := time.Now
	var st untouched
	cfg := Config{Identity: admins{}, Core: core{now}, Ledger: st, Auditor: &trail{},
		Controls: st, Jobs: st, Epochs: st, Timeline: st}
	for name, roles := range map[string]map[string]string{
		"unknown role": {"superuser": "true"},
		"none":         {"none": "true"},
		"bad rule":     {"viewer": "claims.groups +"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg.Roles = roles
			if _, err := NewAdmin(cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestParseRole(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Role
		ok   bool
	}{{"viewer", RoleViewer, true}, {"operator", RoleOperator, true}, {"responder", RoleResponder, true},
		{"admin", RoleAdmin, true}, {"none", RoleNone, false}, {"Admin", RoleNone, false}, {"", RoleNone, false}} {
		if got, ok := ParseRole(c.in); got != c.want || ok != c.ok {
			t.Errorf("ParseRole(%q) = %s, %v", c.in, got, ok)
		}
	}
	if Role(99).String() != "none" || Role(-1).String() != "none" {
		t.Fatal("an out-of-range role must read as none")
	}
}

// TestAuthorizeSignedIn: a console session's verified claims go through the
// same role rules and the same audit as a bearer token; an empty principal
// is 401, and a failed audit write refuses the allowed action.
func TestAuthorizeSignedIn(t *testing.T) {
	for _, c := range []struct {
		name        string
		p           broker.Principal
		need        Role
		wantCode    broker.Code
		wantRole    Role
		wantOutcome string
	}{
		{"viewer reads", broker.Principal{Issuer: "corp", Subject: "vera", Claims: map[string]any{"groups": []any{"viewers"}}}, RoleViewer, "", RoleViewer, "allowed"},
		{"viewer acts", broker.Principal{Issuer: "corp", Subject: "vera", Claims: map[string]any{"groups": []any{"viewers"}}}, RoleResponder, broker.CodeForbidden, RoleNone, "denied"},
		{"admin acts", broker.Principal{Issuer: "corp", Subject: "ada", Claims: map[string]any{"groups": []any{"admins"}}}, RoleResponder, "", RoleAdmin, "allowed"},
		{"no role", broker.Principal{Issuer: "corp", Subject: "nobody", Claims: map[string]any{}}, RoleViewer, broker.CodeForbidden, RoleNone, "denied"},
		{"no principal", broker.Principal{}, RoleViewer, broker.CodeUnauthenticated, RoleNone, "denied"},
	} {
		t.Run(c.name, func(t *testing.T) {
			audit := &trail{}
			p, err := newTestAdmin(t, audit).AuthorizeSignedIn(context.Background(), c.p, c.need, "console.act")
			if broker.ErrorCode(err) != c.wantCode && !(c.wantCode == "" && err == nil) {
				t.Fatalf("err = %v, want code %q", err, c.wantCode)
			}
			if p.Role != c.wantRole {
				t.Fatalf("role = %s, want %s", p.Role, c.wantRole)
			}
			ev := audit.last()
			if ev.Type != "admin.console.act" || ev.Outcome != c.wantOutcome || ev.Detail["via"] != "console" {
				t.Fatalf("audit event %+v", ev)
			}
		})
	}
	a := newTestAdmin(t, &trail{fail: true})
	ada := broker.Principal{Issuer: "corp", Subject: "ada", Claims: map[string]any{"groups": []any{"admins"}}}
	if _, err := a.AuthorizeSignedIn(context.Background(), ada, RoleResponder, "console.act"); broker.ErrorCode(err) != broker.CodeUnavailable {
		t.Fatalf("with the audit down: %v, want 503", err)
	}
}

// TestRoleOfSignedIn: the console's polls get the same role decision as
// AuthorizeSignedIn, but only a refusal is audited.
func TestRoleOfSignedIn(t *testing.T) {
	audit := &trail{}
	a := newTestAdmin(t, audit)
	vera := broker.Principal{Issuer: "corp", Subject: "vera", Claims: map[string]any{"groups": []any{"viewers"}}}
	for range 100 {
		if p, err := a.RoleOfSignedIn(context.Background(), vera, RoleViewer, "console.live"); err != nil || p.Role != RoleViewer {
			t.Fatalf("viewer poll: %v, %s", err, p.Role)
		}
	}
	if n := len(audit.events); n != 0 {
		t.Fatalf("%d audit events for 100 allowed polls, want 0", n)
	}
	if _, err := a.RoleOfSignedIn(context.Background(), vera, RoleResponder, "console.live"); broker.ErrorCode(err) != broker.CodeForbidden {
		t.Fatalf("poll above the role: %v, want 403", err)
	}
	if ev := audit.last(); ev.Outcome != "denied" || ev.Type != "admin.console.live" {
		t.Fatalf("a refused poll was not audited: %+v", ev)
	}
	// The quiet context does not leak into the next allowed attempt.
	if _, err := a.AuthorizeSignedIn(context.Background(), vera, RoleViewer, "console.tasks"); err != nil || audit.last().Type != "admin.console.tasks" {
		t.Fatalf("page view after polls: %v, last audit %+v", err, audit.last())
	}
}
