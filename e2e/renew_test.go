package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// renewTemplates: tasks of triage live 5 minutes by default, 10 at most per
// declaration or renewal, 30 in all.
const renewTemplates = `
templates:
  - name: triage
    principals:
      - issuer: test
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 5m, max: 10m, max_lifetime: 30m}
    tools: [tickets.read, "kb.*"]
    audiences: [https://tools.example.com]
    scopes: [tickets:read]
    conditions:
      - name: no-export
        expression: '!("export" in request.context) || request.context.export == false'
`

// renew posts a renewal of task id with the agent's identity token.
func (e *env) renew(id, identity, body string) response {
	e.t.Helper()
	return e.do(http.MethodPost, "/v1/tasks/"+id+"/renew", identity, "application/json", strings.NewReader(body), false)
}

// renewed renews task id, wants 200, and answers the new deadline and task token.
func (e *env) renewed(id, agent, body string) (time.Time, string) {
	e.t.Helper()
	r := e.renew(id, e.identity(agent), body)
	if r.Status != http.StatusOK {
		e.t.Fatalf("renew %s: %d %s", id, r.Status, r.Body)
	}
	m := r.json(e.t)
	deadline, err := time.Parse(time.RFC3339Nano, m["task"].(map[string]any)["deadline"].(string))
	if err != nil {
		e.t.Fatal(err)
	}
	if r.Header.Get("Cache-Control") != "no-store" {
		e.t.Errorf("renewal answer Cache-Control = %q, want no-store", r.Header.Get("Cache-Control"))
	}
	return deadline, m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
}

func expOf(t *testing.T, m map[string]any) time.Time {
	t.Helper()
	exp, ok := m["exp"].(float64)
	if !ok {
		t.Fatalf("introspection has no exp: %v", m)
	}
	return time.Unix(int64(exp), 0)
}

// TestRenewExtendsTask: a renewal moves the deadline, hands out a token
// whose exp is the new deadline while the old token keeps its own; the
// reaper leaves the renewed task alone at its old deadline; renewals stop
// at max_lifetime; every renewal is audited.
func TestRenewExtendsTask(t *testing.T) {
	e := newEnv(t, envOptions{templates: renewTemplates})
	start := e.clock.Now()
	id, old := e.declared("agent-r", 300)
	oldExp := expOf(t, e.introspect(old))

	e.clock.Advance(4 * time.Minute)
	deadline, fresh := e.renewed(id, "agent-r", `{"ttl_seconds":600}`)
	if want := e.clock.Now().Add(10 * time.Minute); deadline.Sub(want).Abs() > time.Second {
		t.Errorf("renewed deadline = %s, want %s", deadline, want)
	}
	if got := expOf(t, e.introspect(fresh)); got.Sub(deadline).Abs() > time.Second {
		t.Errorf("renewed token exp = %s, want the new deadline %s", got, deadline)
	}
	in := e.introspect(old)
	if in["active"] != true || !expOf(t, in).Equal(oldExp) {
		t.Errorf("old token after renewal: %v; want still active with exp %s", in, oldExp)
	}
	if !strings.Contains(e.audit.String(), `"type":"task.renewed"`) {
		t.Error("no task.renewed audit event")
	}

	// Past the old deadline: the task lives on, the old token does not.
	e.clock.Advance(2 * time.Minute)
	if _, err := e.reaper.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	if in := e.introspect(old); in["active"] != false {
		t.Errorf("old token past its exp: %v, want inactive", in)
	}
	if in := e.introspect(fresh); in["active"] != true {
		t.Errorf("renewed token past the old deadline: %v, want active", in)
	}

	// The lifetime caps the renewal: created + 30m.
	e.clock.Advance(7 * time.Minute) // start + 13m
	if deadline, _ = e.renewed(id, "agent-r", `{"ttl_seconds":600}`); deadline.Sub(start.Add(23*time.Minute)).Abs() > time.Second {
		t.Errorf("second renewal's deadline = %s, want start + 23m", deadline)
	}
	e.clock.Advance(9 * time.Minute) // start + 22m
	deadline, last := e.renewed(id, "agent-r", `{"ttl_seconds":600}`)
	if want := start.Add(30 * time.Minute); deadline.Sub(want).Abs() > time.Second {
		t.Errorf("capped deadline = %s, want created + max_lifetime = %s", deadline, want)
	}
	r := e.renew(id, e.identity("agent-r"), `{}`)
	if r.Status != http.StatusConflict || !strings.Contains(string(r.Body), `"rule":"max_lifetime"`) {
		t.Errorf("renewal at max_lifetime: %d %s; want 409 rule max_lifetime", r.Status, r.Body)
	}

	// At the capped deadline the task ends and stays ended.
	e.clock.Advance(9 * time.Minute) // start + 31m
	if _, err := e.reaper.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	if in := e.introspect(last); in["active"] != false {
		t.Errorf("last token after the task expired: %v, want inactive", in)
	}
	if r := e.renew(id, e.identity("agent-r"), `{}`); r.Status != http.StatusConflict {
		t.Errorf("renewal of an expired task: %d %s; want 409", r.Status, r.Body)
	}
}

// TestRenewRefusals: each case a renewal must refuse, with its status and,
// where one decided, the rule named.
func TestRenewRefusals(t *testing.T) {
	e := newEnv(t, envOptions{templates: renewTemplates, incident: true})
	form := "application/x-www-form-urlencoded"
	for _, c := range []struct {
		name   string
		setup  func(t *testing.T, id, token string) (bearer string)
		body   string
		status int
		rule   string
		says   string
	}{
		{"completed task", func(t *testing.T, id, token string) string {
			if r := e.do(http.MethodPost, "/v1/tasks/"+id+"/complete", token, "", nil, false); r.Status != http.StatusOK {
				t.Fatalf("complete: %d %s", r.Status, r.Body)
			}
			return e.identity("agent-x")
		}, `{}`, http.StatusConflict, "", "already ended (completed)"},
		{"revoked task", func(t *testing.T, id, token string) string {
			if r := e.do(http.MethodPost, "/v1/revoke", "", form, strings.NewReader("token="+token), true); r.Status != http.StatusOK {
				t.Fatalf("revoke: %d %s", r.Status, r.Body)
			}
			return e.identity("agent-x")
		}, `{}`, http.StatusConflict, "", "already ended (revoked)"},
		{"frozen agent", func(t *testing.T, id, token string) string {
			rita := e.adminToken("rita", "valet-responders")
			if r := e.adminDo(http.MethodPost, "/v1/admin/controls", rita, `{"kind":"freeze_agent","target":"agent-x","reason":"leaked"}`); r.Status != http.StatusCreated {
				t.Fatalf("freeze: %d %s", r.Status, r.Body)
			}
			t.Cleanup(func() {
				if r := e.adminDo(http.MethodDelete, "/v1/admin/controls?kind=freeze_agent&target=agent-x", rita, ""); r.Status != http.StatusOK {
					t.Errorf("lift: %d %s", r.Status, r.Body)
				}
			})
			return e.identity("agent-x")
		}, `{}`, http.StatusForbidden, "frozen-agent", "frozen"},
		{"another agent", func(t *testing.T, id, token string) string { return e.identity("agent-y") }, `{}`, http.StatusNotFound, "", "not found"},
		{"task token instead of identity", func(t *testing.T, id, token string) string { return token }, `{}`, http.StatusUnauthorized, "", ""},
		{"no bearer", func(t *testing.T, id, token string) string { return "" }, `{}`, http.StatusUnauthorized, "", ""},
		{"condition denies", func(t *testing.T, id, token string) string { return e.identity("agent-x") },
			`{"ttl_seconds":600,"context":{"export":true}}`, http.StatusForbidden, "no-export", ""},
		{"no later deadline", func(t *testing.T, id, token string) string { return e.identity("agent-x") },
			`{"ttl_seconds":60}`, http.StatusConflict, "", "would not move"},
		{"ttl over the template max", func(t *testing.T, id, token string) string { return e.identity("agent-x") },
			`{"ttl_seconds":3600}`, http.StatusBadRequest, "", "exceeds the maximum"},
		{"ttl not positive", func(t *testing.T, id, token string) string { return e.identity("agent-x") },
			`{"ttl_seconds":0}`, http.StatusBadRequest, "", "ttl_seconds"},
		{"unknown field", func(t *testing.T, id, token string) string { return e.identity("agent-x") },
			`{"tools":["kb.search"]}`, http.StatusBadRequest, "", "unknown field"},
	} {
		t.Run(c.name, func(t *testing.T) {
			id, token := e.declared("agent-x", 300)
			bearer := c.setup(t, id, token)
			r := e.renew(id, bearer, c.body)
			body := string(r.Body)
			if r.Status != c.status || (c.rule != "" && !strings.Contains(body, `"rule":"`+c.rule+`"`)) || !strings.Contains(body, c.says) {
				t.Fatalf("renewal: %d %s; want %d rule %q saying %q", r.Status, body, c.status, c.rule, c.says)
			}
			if in := e.introspect(token); c.status != http.StatusOK && in["active"] == true && c.name != "frozen agent" {
				// The task token is unchanged: a refused renewal issues nothing.
				if exp := expOf(t, in); exp.After(e.clock.Now().Add(5 * time.Minute)) {
					t.Errorf("task token exp moved to %s by a refused renewal", exp)
				}
			}
		})
	}
}

// TestNoAuditNoRenewal: a renewal whose task.renewed event cannot be
// written is answered 503 without credentials, and the task, whose ledger
// record already holds them, is ended with the refusal's reason.
func TestNoAuditNoRenewal(t *testing.T) {
	a := &brokenAuditor{fails: "task.renewed"}
	e := newEnv(t, envOptions{templates: renewTemplates, auditor: a})
	id, token := e.declared("agent-r", 300)
	a.failing.Store(true)
	r := e.renew(id, e.identity("agent-r"), `{"ttl_seconds":600}`)
	if r.Status != http.StatusServiceUnavailable || strings.Contains(string(r.Body), "access_token") {
		t.Fatalf("renewal with a failing audit log: %d %s", r.Status, r.Body)
	}
	task, creds, err := e.raw.Task(t.Context(), id)
	if err != nil || task.State != broker.StateRevoked || task.EndReason != broker.RefusedReason {
		t.Fatalf("the unaudited renewal's task: %+v %v", task, err)
	}
	if len(creds) != 2 {
		t.Errorf("the task holds %d credentials, want the declared and the renewed token", len(creds))
	}
	if in := e.introspect(token); in["active"] != false {
		t.Errorf("the task's token after a refused renewal: %v, want inactive", in)
	}
}
