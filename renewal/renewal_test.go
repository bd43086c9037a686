package renewal

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

const renewTestTemplates = `
templates:
  - name: t
    principals: [{issuer: test}]
    ttl: {default: 5m, max: 10m, max_lifetime: 30m}
    tools: [a.read, "kb.*"]
    audiences: [aud-1, aud-2]
    scopes: [s1, s2]
    sensitive_tools:
      - {tool: a.delete, rule: approval}
    conditions:
      - name: no-export
        expression: '!("export" in request.context)'
`

func renewService(t *testing.T) *Service {
	t.Helper()
	set, err := policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(renewTestTemplates)}}, []string{"test"})
	if err != nil {
		t.Fatal(err)
	}
	return &Service{core: templatesOnly{set: set}}
}

// templatesOnly is a Core that only answers Templates, all decide uses.
type templatesOnly struct {
	Core
	set *policy.Set
}

func (c templatesOnly) Templates() *policy.Set { return c.set }

// TestRenewable: only an active root task of the agent alone, before its
// deadline and recorded with its audiences, may be renewed; each refusal
// is a 409 saying why.
func TestRenewable(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	live := broker.Task{ID: "tsk_a", State: broker.StateActive, Deadline: now.Add(time.Minute), Audiences: []string{"aud-1"}}
	for _, c := range []struct {
		name   string
		adjust func(*broker.Task)
		says   string
	}{
		{"live", func(*broker.Task) {}, ""},
		{"completed", func(t *broker.Task) { t.State = broker.StateCompleted }, "already ended (completed)"},
		{"revoked", func(t *broker.Task) { t.State = broker.StateRevoked }, "already ended (revoked)"},
		{"at its deadline", func(t *broker.Task) { t.Deadline = now }, "passed its deadline"},
		{"delegated", func(t *broker.Task) { t.Parent = "tsk_p" }, "renew the root task"},
		{"on behalf of a user", func(t *broker.Task) { t.Subject, t.SubjectIssuer = "user", "corp" }, "on behalf of a user"},
		{"older record", func(t *broker.Task) { t.Audiences = nil }, "before renewal existed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			task := live
			c.adjust(&task)
			err := renewable(task, now, false)
			if c.says == "" {
				if err != nil {
					t.Fatalf("renewable: %v", err)
				}
				return
			}
			if broker.ErrorCode(err) != broker.CodeConflict || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("renewable = %v; want a conflict saying %q", err, c.says)
			}
		})
	}
}

// TestDecide: the new deadline is now + ttl cut to created +
// max_lifetime; the grant keeps the task's tools (sensitive ones apart),
// and its audiences and scopes narrowed to the template's; refusals name
// their rule or field.
func TestDecide(t *testing.T) {
	s := renewService(t)
	created := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	p := broker.Principal{Issuer: "test", Subject: "agent-a"}
	base := broker.Task{ID: "tsk_a", State: broker.StateActive, Agent: "agent-a", Issuer: "test", Template: "t", Intent: "read",
		Tools: []string{"a.read", "kb.search", "a.delete"}, CreatedAt: created, Deadline: created.Add(5 * time.Minute),
		Audiences: []string{"aud-2", "gone"}, Scopes: []string{"s2", "gone"}}

	t.Run("extends by the default ttl", func(t *testing.T) {
		now := created.Add(4 * time.Minute)
		g, deadline, err := s.decide(p, base, Request{}, now)
		if err != nil {
			t.Fatal(err)
		}
		if want := now.Add(5 * time.Minute); !deadline.Equal(want) {
			t.Errorf("deadline = %s, want %s", deadline, want)
		}
		if strings.Join(g.Tools, ",") != "a.read,kb.search" || strings.Join(g.ActionTools, ",") != "a.delete" {
			t.Errorf("tools = %v, action tools = %v", g.Tools, g.ActionTools)
		}
		if strings.Join(g.Audiences, ",") != "aud-2" || strings.Join(g.Scopes, ",") != "s2" {
			t.Errorf("audiences = %v, scopes = %v; want only what both the task and the template hold", g.Audiences, g.Scopes)
		}
	})
	t.Run("cut to max_lifetime", func(t *testing.T) {
		task := base
		task.Deadline = created.Add(25 * time.Minute)
		now := created.Add(24 * time.Minute)
		_, deadline, err := s.decide(p, task, Request{TTL: 10 * time.Minute}, now)
		if err != nil {
			t.Fatal(err)
		}
		if want := created.Add(30 * time.Minute); !deadline.Equal(want) {
			t.Errorf("deadline = %s, want created + max_lifetime %s", deadline, want)
		}
	})
	for _, c := range []struct {
		name  string
		task  func(broker.Task) broker.Task
		r     Request
		now   time.Duration // after created
		code  broker.Code
		rule  string
		field string
	}{
		{"at max_lifetime", func(t broker.Task) broker.Task { t.Deadline = created.Add(30 * time.Minute); return t }, Request{TTL: 10 * time.Minute}, 25 * time.Minute, broker.CodeConflict, "max_lifetime", ""},
		{"ttl moves nothing", func(t broker.Task) broker.Task { return t }, Request{TTL: time.Minute}, time.Minute, broker.CodeConflict, "", "ttl_seconds"},
		{"ttl over max", func(t broker.Task) broker.Task { return t }, Request{TTL: 11 * time.Minute}, time.Minute, broker.CodeInvalid, "", "ttl_seconds"},
		{"condition", func(t broker.Task) broker.Task { return t }, Request{Context: map[string]any{"export": true}}, 4 * time.Minute, broker.CodeForbidden, "no-export", ""},
		{"tool no longer allowed", func(t broker.Task) broker.Task { t.Tools = []string{"b.write"}; return t }, Request{}, 4 * time.Minute, broker.CodeForbidden, "tools", "tools[0]"},
		{"no audience left", func(t broker.Task) broker.Task { t.Audiences = []string{"gone"}; return t }, Request{}, 4 * time.Minute, broker.CodeForbidden, "audience", ""},
		{"template gone", func(t broker.Task) broker.Task { t.Template = "gone"; return t }, Request{}, 4 * time.Minute, broker.CodeForbidden, "template", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := s.decide(p, c.task(base), c.r, created.Add(c.now))
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != c.code || e.Rule != c.rule || e.Field != c.field {
				t.Fatalf("decide = %#v; want code %s rule %q field %q", err, c.code, c.rule, c.field)
			}
		})
	}
	t.Run("principal no longer admitted", func(t *testing.T) {
		_, _, err := s.decide(broker.Principal{Issuer: "other", Subject: "agent-a"}, base, Request{}, created.Add(4*time.Minute))
		var e *broker.Error
		if !errors.As(err, &e) || e.Code != broker.CodeForbidden || e.Rule != "principals" {
			t.Fatalf("decide = %v; want 403 rule principals", err)
		}
	})
}

// TestNewRequiresDependencies: New names every missing dependency and
// builds a Service when all are given.
func TestNewRequiresDependencies(t *testing.T) {
	_, err := New(Config{})
	if err == nil || !strings.Contains(err.Error(), "core, ledger, auditor cannot be nil") {
		t.Fatalf("New(Config{}) = %v; want every missing dependency named", err)
	}
	s, err := New(Config{Core: templatesOnly{}, Ledger: nilLedger{}, Auditor: nilAuditor{}})
	if err != nil || s.now == nil || s.log == nil {
		t.Fatalf("New = %v, %v; want a Service with a clock and a logger", s, err)
	}
}

type nilLedger struct{ Ledger }

type nilAuditor struct{ broker.Auditor }
