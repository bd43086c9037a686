package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/delegation"
)

// agentTemplates allow delegation: crew deep (max_depth 10), pair at the
// default depth of 2, solo not at all.
const agentTemplates = `
templates:
  - name: crew
    principals:
      - issuer: test
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 10m, max: 15m}
    tools: [tickets.read, tickets.comment, "kb.*"]
    audiences: [https://tools.example.com, https://other.example.com]
    scopes: [tickets:read, tickets:write]
    delegation:
      max_depth: 10
      condition: 'claims.sub.startsWith("agent-")'
    budgets: {delegations: 5000}
  - name: pair
    principals: [{issuer: test}]
    ttl: {default: 10m, max: 15m}
    tools: [tickets.read, tickets.comment]
    audiences: [https://tools.example.com]
    delegation:
      condition: 'true'
    budgets: {delegations: 3}
  - name: solo
    principals: [{issuer: test}]
    ttl: {default: 10m, max: 15m}
    tools: [tickets.read]
    audiences: [https://tools.example.com]
`

// declareIn declares a task of template for agent with tools.
func (e *env) declareIn(template, agent string, tools ...string) (taskID, token string) {
	e.t.Helper()
	body := `{"template":"` + template + `","intent":"work on ticket 4521","tools":["` + strings.Join(tools, `","`) + `"]}`
	r := e.declare(e.identity(agent), body)
	if r.Status != http.StatusCreated {
		e.t.Fatalf("declare: %d %s", r.Status, r.Body)
	}
	m := r.json(e.t)
	return m["task"].(map[string]any)["id"].(string), m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
}

// exchange asks for a child token of parent for agent.
func (e *env) exchange(parent, agent string, tools string, extra url.Values) response {
	e.t.Helper()
	f := url.Values{
		"grant_type":         {delegation.GrantTypeTokenExchange},
		"subject_token":      {parent},
		"subject_token_type": {delegation.TokenTypeAccessToken},
		"actor_token_type":   {delegation.TokenTypeIDToken},
		"tools":              {tools},
	}
	if agent != "" {
		f.Set("actor_token", e.identity(agent))
	}
	for k, v := range extra {
		f[k] = v
	}
	return e.do(http.MethodPost, "/v1/token", "", "application/x-www-form-urlencoded", strings.NewReader(f.Encode()), false)
}

// child exchanges and returns the child's task id and token.
func (e *env) child(parent, agent, tools string) (string, string) {
	e.t.Helper()
	r := e.exchange(parent, agent, tools, nil)
	if r.Status != http.StatusOK {
		e.t.Fatalf("exchange for %s: %d %s", agent, r.Status, r.Body)
	}
	m := r.json(e.t)
	return m["task"].(map[string]any)["id"].(string), m["access_token"].(string)
}

func TestDelegationRefusals(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates})
	_, root := e.declareIn("crew", "agent-root", "tickets.read", "kb.search")

	cases := []struct {
		name   string
		parent string
		agent  string
		tools  string
		extra  url.Values
		status int
		want   string
	}{
		{"no subject token", "", "agent-b", "tickets.read", nil, 400, `"field":"subject_token"`},
		{"no actor token", root, "", "tickets.read", nil, 400, `"field":"actor_token"`},
		{"wrong grant type", root, "agent-b", "tickets.read", url.Values{"grant_type": {"password"}}, 400, `"error":"unsupported_grant_type"`},
		{"a tool the parent lacks", root, "agent-b", "tickets.read tickets.comment", nil, 403, `tool \"tickets.comment\" is not held`},
		{"an audience the parent lacks", root, "agent-b", "tickets.read", url.Values{"audience": {"https://evil.example.com"}}, 403, `"rule":"audience"`},
		{"a scope the parent lacks", root, "agent-b", "tickets.read", url.Values{"scope": {"admin"}}, 403, `"rule":"scope"`},
		{"longer than the parent", root, "agent-b", "tickets.read", url.Values{"ttl_seconds": {"900"}}, 403, `"rule":"ttl"`},
		{"a sub-agent the template does not allow", root, "bot-b", "tickets.read", nil, 403, `"rule":"delegation.condition"`},
		{"a forged subject token", root[:len(root)-4] + "AAAA", "agent-b", "tickets.read", nil, 401, `"error":"unauthenticated"`},
		{"no tools", root, "agent-b", "", nil, 400, `"field":"tools"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.exchange(c.parent, c.agent, c.tools, c.extra)
			if r.Status != c.status || !strings.Contains(string(r.Body), c.want) {
				t.Fatalf("got %d %s, want %d with %s", r.Status, r.Body, c.status, c.want)
			}
		})
	}

	t.Run("a template without delegation", func(t *testing.T) {
		_, solo := e.declareIn("solo", "agent-solo", "tickets.read")
		if r := e.exchange(solo, "agent-b", "tickets.read", nil); r.Status != 403 || !strings.Contains(string(r.Body), `"rule":"delegation"`) {
			t.Fatalf("got %d %s", r.Status, r.Body)
		}
	})
	t.Run("depth over the default cap of 2", func(t *testing.T) {
		_, p := e.declareIn("pair", "agent-p", "tickets.read")
		_, c1 := e.child(p, "agent-q", "tickets.read")
		_, c2 := e.child(c1, "agent-r", "tickets.read")
		if r := e.exchange(c2, "agent-s", "tickets.read", nil); r.Status != 403 || !strings.Contains(string(r.Body), `"rule":"delegation.max_depth"`) {
			t.Fatalf("got %d %s", r.Status, r.Body)
		}
		// pair's budget is 3 delegations per tree: two are spent, the
		// refused one did not count, so one more is allowed and no more.
		e.child(p, "agent-t", "tickets.read")
		if r := e.exchange(p, "agent-u", "tickets.read", nil); r.Status != 403 || !strings.Contains(string(r.Body), `"rule":"budgets.delegations"`) {
			t.Fatalf("got %d %s", r.Status, r.Body)
		}
	})
	t.Run("child of a revoked parent", func(t *testing.T) {
		_, p := e.declareIn("crew", "agent-x", "tickets.read")
		e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+p), true)
		if r := e.exchange(p, "agent-b", "tickets.read", nil); r.Status != 401 {
			t.Fatalf("got %d %s", r.Status, r.Body)
		}
	})
}

// TestDelegatedToken: the child token carries the act chain, names the root
// agent as sub, and its lifetime ends at or before the parent's.
func TestDelegatedToken(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates})
	rootID, root := e.declareIn("crew", "agent-a", "tickets.read", "kb.search")
	_, c1 := e.child(root, "agent-b", "tickets.read kb.search")
	c2ID, c2 := e.child(c1, "agent-c", "kb.search")
	in := e.introspect(c2)
	act, _ := in["act"].(map[string]any)
	if in["active"] != true || in["sub"] != "agent-a" || in["client_id"] != "agent-c" || act["sub"] != "agent-c" ||
		act["act"].(map[string]any)["sub"] != "agent-b" {
		t.Fatalf("introspection of a grandchild: %v", in)
	}
	if tools := in["tools"].([]any); len(tools) != 1 || tools[0] != "kb.search" {
		t.Fatalf("tools = %v", tools)
	}
	pc, _ := e.tokens.Verify(root)
	cc, _ := e.tokens.Verify(c2)
	if cc.ExpiresAt.After(pc.ExpiresAt) {
		t.Fatalf("child expires at %s, after its root %s", cc.ExpiresAt, pc.ExpiresAt)
	}
	// The grandchild's agent can read its task; the task names its tree.
	r := e.do(http.MethodGet, "/v1/tasks/"+c2ID, c2, "", nil, false)
	if r.Status != http.StatusOK {
		t.Fatalf("get child task: %d %s", r.Status, r.Body)
	}
	task := r.json(t)["task"].(map[string]any)
	if task["root"] != rootID || task["depth"] != float64(2) || task["agent"] != "agent-c" {
		t.Fatalf("child task: %v", task)
	}
	if !strings.Contains(e.audit.String(), `"task.delegated"`) {
		t.Fatal("no task.delegated audit event")
	}
	// A child cannot outlive its parent even when asked for the maximum:
	// two minutes later the parent has 8 minutes left.
	e.clock.Advance(2 * time.Minute)
	if r := e.exchange(root, "agent-d", "tickets.read", url.Values{"ttl_seconds": {"600"}}); r.Status != 403 {
		t.Fatalf("ttl beyond the parent's remaining time: %d %s", r.Status, r.Body)
	}
}
