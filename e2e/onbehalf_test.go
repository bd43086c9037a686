package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
)

// onBehalfTemplates: assist lets agents act for users of the test issuer
// whose email is at example.com, and a condition ties the user's tenant to
// the agent's; solo has no users block.
const onBehalfTemplates = `
templates:
  - name: assist
    principals:
      - issuer: test
        condition: 'claims.sub.startsWith("agent-")'
    users:
      - issuer: test
        condition: 'has(claims.email) && claims.email.endsWith("@example.com")'
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read, tickets.comment]
    audiences: [https://tools.example.com]
    conditions:
      - name: same-tenant
        expression: 'size(user) == 0 || user.claims.tenant == principal.claims.tenant'
  - name: solo
    principals: [{issuer: test}]
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read]
    audiences: [https://tools.example.com]
`

// obo builds a declaration body for template carrying subject_token.
func obo(template, subjectToken string) string {
	b, _ := json.Marshal(map[string]any{"template": template, "intent": "answer the user's ticket",
		"tools": []string{"tickets.read"}, "subject_token": subjectToken})
	return string(b)
}

func (e *env) agentIn(agent, tenant string) string {
	return e.idp.Token(e.t, map[string]any{"sub": agent, "tenant": tenant}, oidctest.WithNow(e.clock.Now()))
}

func (e *env) user(sub, email, tenant string) string {
	return e.idp.Token(e.t, map[string]any{"sub": sub, "email": email, "tenant": tenant}, oidctest.WithNow(e.clock.Now()))
}

// TestOnBehalfOfUser: the task token names the user as sub and the agent
// in act; introspection shows both; the agent still owns the task.
func TestOnBehalfOfUser(t *testing.T) {
	e := newEnv(t, envOptions{templates: onBehalfTemplates})
	r := e.declare(e.agentIn("agent-1", "t1"), obo("assist", e.user("user-alice", "alice@example.com", "t1")))
	if r.Status != http.StatusCreated {
		t.Fatalf("declare on behalf of a user: %d %s", r.Status, r.Body)
	}
	m := r.json(t)
	task := m["task"].(map[string]any)
	id := task["id"].(string)
	tok := m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
	if task["agent"] != "agent-1" || task["subject"] != "user-alice" || task["subject_issuer"] != "test" {
		t.Fatalf("task: %v", task)
	}
	c, err := e.tokens.Verify(tok)
	if err != nil || c.Subject != "user-alice" || c.ClientID != "agent-1" || len(c.Act) != 1 || c.Act[0] != "agent-1" || c.Actor() != "agent-1" {
		t.Fatalf("token claims: %+v, %v", c, err)
	}
	in := e.introspect(tok)
	act, _ := in["act"].(map[string]any)
	if in["active"] != true || in["sub"] != "user-alice" || in["client_id"] != "agent-1" || act["sub"] != "agent-1" || act["act"] != nil {
		t.Fatalf("introspection: %v", in)
	}
	// The task is read back from the ledger with its user.
	got := e.do(http.MethodGet, "/v1/tasks/"+id, tok, "", nil, false)
	if got.Status != http.StatusOK {
		t.Fatalf("get task with its token: %d %s", got.Status, got.Body)
	}
	if task := got.json(t)["task"].(map[string]any); task["subject"] != "user-alice" || task["subject_issuer"] != "test" {
		t.Fatalf("task from the ledger: %v", task)
	}
	if got := e.do(http.MethodGet, "/v1/tasks/"+id, e.identity("agent-1"), "", nil, false); got.Status != http.StatusOK {
		t.Fatalf("get task with the agent's identity: %d %s", got.Status, got.Body)
	}
	if got := e.do(http.MethodGet, "/v1/tasks/"+id, e.user("user-alice", "alice@example.com", "t1"), "", nil, false); got.Status != http.StatusNotFound {
		t.Fatalf("the user is not the task's agent: %d %s", got.Status, got.Body)
	}
	// The grant is audited with the user's ids, never the token.
	evs := e.auditEvents("task.granted")
	if len(evs) != 1 {
		t.Fatalf("%d task.granted events", len(evs))
	}
	detail, _ := evs[0]["detail"].(map[string]any)
	if evs[0]["actor"] != "agent-1" || detail["subject"] != "user-alice" || detail["subject_issuer"] != "test" {
		t.Fatalf("audit event: %v", evs[0])
	}
	if strings.Contains(e.audit.String(), "eyJ") {
		t.Fatal("a token reached the audit log")
	}
	// The agent completes its task with the task token (Actor is the agent).
	if done := e.do(http.MethodPost, "/v1/tasks/"+id+"/complete", tok, "", nil, false); done.Status != http.StatusOK {
		t.Fatalf("complete: %d %s", done.Status, done.Body)
	}
	if in := e.introspect(tok); in["active"] != false {
		t.Fatalf("completed task's token still active: %v", in)
	}
	// Without subject_token nothing changes: sub is the agent, no act.
	_, plain := e.declareIn("assist", "agent-1", "tickets.read")
	if in := e.introspect(plain); in["sub"] != "agent-1" || in["act"] != nil {
		t.Fatalf("plain task introspection: %v", in)
	}
}

// TestOnBehalfOfRefusals: a bad user token is the fixed 401 with nothing
// written; policy refusals name their rule.
func TestOnBehalfOfRefusals(t *testing.T) {
	e := newEnv(t, envOptions{templates: onBehalfTemplates})
	_, taskToken := e.declareIn("solo", "agent-0", "tickets.read")
	stranger := oidctest.New(t) // an issuer Valet does not trust
	good := e.user("user-alice", "alice@example.com", "t1")
	agent := e.agentIn("agent-1", "t1")

	unauth := []struct{ name, token string }{
		{"untrusted issuer", stranger.Token(t, map[string]any{"sub": "user-alice", "email": "alice@example.com", "tenant": "t1"}, oidctest.WithNow(e.clock.Now()))},
		{"forged signature", good[:len(good)-6] + "AAAAAA"},
		{"expired", e.idp.Token(t, map[string]any{"sub": "user-alice", "email": "alice@example.com", "tenant": "t1"}, oidctest.WithNow(e.clock.Now().Add(-2*time.Hour)))},
		{"no sub", e.idp.Token(t, map[string]any{"sub": nil, "email": "alice@example.com", "tenant": "t1"}, oidctest.WithNow(e.clock.Now()))},
		{"a Valet task token", taskToken},
		{"not a JWT", "hello"},
	}
	before := e.ledger.writes.Load()
	for _, c := range unauth {
		t.Run(c.name, func(t *testing.T) {
			r := e.declare(agent, obo("assist", c.token))
			if r.Status != http.StatusUnauthorized || r.json(t)["message"] != "unable to verify bearer token" {
				t.Fatalf("got %d %s, want the fixed 401", r.Status, r.Body)
			}
		})
	}
	if n := e.ledger.writes.Load() - before; n != 0 {
		t.Fatalf("%d ledger writes for refused user tokens", n)
	}
	if n := len(e.auditEvents("task.granted")); n != 1 { // the solo task above
		t.Fatalf("%d grants", n)
	}

	forbidden := []struct{ name, agent, body, rule string }{
		{"template without users", agent, obo("solo", good), "users"},
		{"user the users rule refuses", agent, obo("assist", e.user("user-mallory", "m@evil.test", "t1")), "users"},
		{"user of another tenant", agent, obo("assist", e.user("user-bob", "bob@example.com", "t2")), "same-tenant"},
		// The agent's own token as subject_token still has to pass users:
		// its identity carries no example.com email.
		{"the agent's own identity", agent, obo("assist", agent), "users"},
		{"the agent's own identity, no users block", e.identity("agent-0"), obo("solo", e.identity("agent-0")), "users"},
	}
	for _, c := range forbidden {
		t.Run(c.name, func(t *testing.T) {
			r := e.declare(c.agent, c.body)
			if r.Status != http.StatusForbidden || r.json(t)["rule"] != c.rule {
				t.Fatalf("got %d %s, want 403 by rule %s", r.Status, r.Body, c.rule)
			}
		})
	}
	if n := e.ledger.writes.Load() - before; n != 0 {
		t.Fatalf("%d ledger writes for refused declarations", n)
	}
	if r := e.declare(agent, `{"template":"assist","intent":"x y z","tools":["tickets.read"],"subject_token":""}`); r.Status != http.StatusBadRequest {
		t.Fatalf("empty subject_token: %d %s", r.Status, r.Body)
	}
	// The agent's own identity passes when users: admits it.
	self := e.idp.Token(t, map[string]any{"sub": "agent-1", "email": "agent-1@example.com", "tenant": "t1"}, oidctest.WithNow(e.clock.Now()))
	r := e.declare(self, obo("assist", self))
	if r.Status != http.StatusCreated {
		t.Fatalf("own identity admitted by users: %d %s", r.Status, r.Body)
	}
	if task := r.json(t)["task"].(map[string]any); task["subject"] != "agent-1" || task["agent"] != "agent-1" {
		t.Fatalf("task: %v", task)
	}
}

// TestOnBehalfOfAgentEpoch: a revoked-before epoch for the agent covers its
// on-behalf-of tokens at introspection, though their sub is the user.
func TestOnBehalfOfAgentEpoch(t *testing.T) {
	e := newEnv(t, envOptions{templates: onBehalfTemplates, incident: true})
	r := e.declare(e.agentIn("agent-1", "t1"), obo("assist", e.user("user-alice", "alice@example.com", "t1")))
	if r.Status != http.StatusCreated {
		t.Fatalf("declare: %d %s", r.Status, r.Body)
	}
	tok := r.json(t)["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
	if in := e.introspect(tok); in["active"] != true {
		t.Fatalf("fresh token inactive: %v", in)
	}
	e.clock.Advance(time.Second)
	if err := e.raw.SetEpoch(context.Background(), broker.Epoch{Dimension: broker.DimAgent, Key: broker.AgentKey("test", "agent-1"),
		Before: e.clock.Now()}); err != nil {
		t.Fatal(err)
	}
	if in := e.introspect(tok); in["active"] != false {
		t.Fatalf("token of an agent under an epoch still active: %v", in)
	}
}
