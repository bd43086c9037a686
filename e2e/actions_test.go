package e2e

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/internal/server"
)

// actionTemplates have sensitive tools: tickets.delete under a policy
// that reads an ops-defined resource label, tickets.purge under approval.
const actionTemplates = `
templates:
  - name: ops
    principals: [{issuer: test}]
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read, "tickets.*"]
    audiences: [https://tools.example.com]
    budgets: {actions: 6}
    sensitive_tools:
      - tool: tickets.delete
        rule: policy
        condition: 'action.args.ticket != "1" && resource.sensitivity != "high"'
        resource: db:tickets
      - tool: tickets.purge
        rule: approval
        resource: db:tickets
      - tool: tickets.wipe
        rule: policy
        condition: 'resource.sensitivity == "low"'
        resource: db:customers
`

func actionAgentConfig(c *server.StepUpOptions) {
	c.Resources = map[string]map[string]string{
		"db:tickets":   {"sensitivity": "low"},
		"db:customers": {"sensitivity": "high"},
	}
}

// agentSession is an agent holding a task token, bound to a DPoP key when
// key is set.
type agentSession struct {
	e      *env
	key    *dpop.Signer
	taskID string
	token  string
}

func (e *env) boundTask(key *dpop.Signer, tools ...string) *agentSession {
	e.t.Helper()
	body := `{"template":"ops","intent":"clean up duplicate tickets","tools":["` + strings.Join(tools, `","`) + `"]}`
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/tasks", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.identity("agent-a"))
	req.Header.Set("Content-Type", "application/json")
	if key != nil {
		p, err := key.Proof(http.MethodPost, e.srv.URL+"/v1/tasks", e.clock.Now(), "")
		if err != nil {
			e.t.Fatal(err)
		}
		req.Header.Set("DPoP", p)
	}
	r := e.send(req)
	if r.Status != http.StatusCreated {
		e.t.Fatalf("declare: %d %s", r.Status, r.Body)
	}
	m := r.json(e.t)
	return &agentSession{e: e, key: key, taskID: m["task"].(map[string]any)["id"].(string),
		token: m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)}
}

func (e *env) send(req *http.Request) response {
	e.t.Helper()
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// authorize sets the task token, and a fresh DPoP proof for method and
// url when the session is bound.
func (a *agentSession) authorize(req *http.Request, client *http.Client) {
	a.e.t.Helper()
	if a.key == nil {
		req.Header.Set("Authorization", "Bearer "+a.token)
		return
	}
	req.Header.Set("Authorization", "DPoP "+a.token)
	u := *req.URL
	u.RawQuery = ""
	p, err := a.key.Proof(req.Method, u.String(), a.e.clock.Now(), a.token)
	if err != nil {
		a.e.t.Fatal(err)
	}
	req.Header.Set("DPoP", p)
}

// askAction posts an action request.
func (a *agentSession) askAction(tool, args string) response {
	a.e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, a.e.srv.URL+"/v1/tasks/"+a.taskID+"/actions",
		strings.NewReader(`{"tool":"`+tool+`","args":`+args+`,"context":{"why":"duplicate of 9"}}`))
	req.Header.Set("Content-Type", "application/json")
	a.authorize(req, a.e.client)
	return a.e.send(req)
}

func (a *agentSession) actionToken(tool, args string) string {
	a.e.t.Helper()
	r := a.askAction(tool, args)
	if r.Status != http.StatusCreated {
		a.e.t.Fatalf("action %s %s: %d %s", tool, args, r.Status, r.Body)
	}
	return r.json(a.e.t)["action_token"].(string)
}

// deleteTicket calls the sensitive tool on the example tool server.
func (a *agentSession) deleteTicket(ts *httptest.Server, id, actionToken string) int {
	a.e.t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, ts.URL+"/tickets/"+id, nil)
	a.authorize(req, http.DefaultClient)
	if actionToken != "" {
		req.Header.Set("Valet-Action", actionToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func jwtPart(t *testing.T, tok string, i int) map[string]any {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[i])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestActionTokens: sensitive tools are never in a task token; an action
// token is issued under policy, bound to the task's key and the argument
// hash, and refused when replayed, used with changed arguments, used after
// its TTL, or used by another DPoP key; the actions budget caps issuance.
func TestActionTokens(t *testing.T) {
	e := newEnv(t, envOptions{templates: actionTemplates, agent: actionAgentConfig})
	ts, _, ct := newToolServer(t, e, false)
	keyA, keyB := newDPoPSigner(t), newDPoPSigner(t)

	// A sensitive tool is granted like any tool, but into the token's
	// action_tools, never its tools: no tool server takes it without an
	// action token.
	a := e.boundTask(keyA, "tickets.read", "tickets.delete", "tickets.wipe")
	b := e.boundTask(keyB, "tickets.read", "tickets.delete")
	if c := jwtPart(t, a.token, 1); strings.Contains(string(mustJSON(c["tools"])), "tickets.delete") || !strings.Contains(string(mustJSON(c["action_tools"])), "tickets.delete") {
		t.Fatalf("task token tools %v action_tools %v", c["tools"], c["action_tools"])
	}
	// Issue 9 finding 5: an action is bounded by the task's own grant.
	if r := b.askAction("tickets.wipe", `{}`); r.Status != 403 || r.json(t)["rule"] != "tools" {
		t.Fatalf("action for a sensitive tool the task was not granted: %d %s", r.Status, r.Body)
	}

	tok := a.actionToken("tickets.delete", `{"ticket":"7"}`)
	h, c := jwtPart(t, tok, 0), jwtPart(t, tok, 1)
	if h["typ"] != "action+jwt" || c["tool"] != "tickets.delete" || c["task_id"] != a.taskID ||
		c["cnf"].(map[string]any)["jkt"] != keyA.JKT() || c["exp"].(float64)-c["iat"].(float64) > 60 {
		t.Fatalf("action token header %v claims %v", h, c)
	}
	if strings.Contains(e.audit.String(), `"7"`) {
		t.Fatal("an argument value reached the audit log")
	}
	consumes := func() int { return ct.get("/v1/actions/consume") }

	if s := a.deleteTicket(ts, "7", ""); s != http.StatusForbidden {
		t.Fatalf("sensitive tool without an action token: %d", s)
	}
	if s := a.deleteTicket(ts, "8", tok); s != http.StatusForbidden {
		t.Fatalf("action token used with changed arguments: %d", s)
	}
	if s := b.deleteTicket(ts, "7", tok); s != http.StatusForbidden {
		t.Fatalf("action token used by another task bound to another key: %d", s)
	}
	stolen, _ := http.NewRequest(http.MethodDelete, ts.URL+"/tickets/7", nil)
	stolen.Header.Set("Authorization", "DPoP "+a.token)
	p, _ := keyB.Proof(http.MethodDelete, ts.URL+"/tickets/7", e.clock.Now(), a.token)
	stolen.Header.Set("DPoP", p)
	stolen.Header.Set("Valet-Action", tok)
	if resp, err := http.DefaultClient.Do(stolen); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("task and action token used with another DPoP key: %v %v", resp.StatusCode, err)
	}
	if n := consumes(); n != 0 {
		t.Fatalf("refusals before consumption called Valet %d times", n)
	}
	if s := a.deleteTicket(ts, "7", tok); s != http.StatusOK {
		t.Fatalf("first use: %d", s)
	}
	if s := a.deleteTicket(ts, "7", tok); s != http.StatusForbidden {
		t.Fatalf("replayed action token: %d", s)
	}
	if r := e.do(http.MethodPost, "/v1/actions/consume", "", "application/x-www-form-urlencoded", strings.NewReader("token="+tok), true); r.json(t)["consumed"] != false {
		t.Fatalf("consuming a used token again: %s", r.Body)
	}

	late := a.actionToken("tickets.delete", `{"ticket":"9"}`)
	e.clock.Advance(61 * time.Second)
	if s := a.deleteTicket(ts, "9", late); s != http.StatusForbidden {
		t.Fatalf("action token used after its TTL: %d", s)
	}
	if r := e.do(http.MethodPost, "/v1/actions/consume", "", "application/x-www-form-urlencoded", strings.NewReader("token="+late), true); r.json(t)["consumed"] != false {
		t.Fatalf("Valet consumed an expired action token: %s", r.Body)
	}

	r := a.askAction("tickets.delete", `{"ticket":"1"}`)
	if m := r.json(t); r.Status != 403 || m["rule"] != "sensitive_tools[tickets.delete].condition" {
		t.Fatalf("policy denial: %d %s", r.Status, r.Body)
	}
	if r := a.askAction("tickets.wipe", `{}`); r.Status != 403 || r.json(t)["rule"] != "sensitive_tools[tickets.wipe].condition" {
		t.Fatalf("denial by resource label: %d %s", r.Status, r.Body)
	}
	if r := a.askAction("tickets.read", `{}`); r.Status != 403 || r.json(t)["rule"] != "sensitive_tools" {
		t.Fatalf("action token for a tool that is not sensitive: %d %s", r.Status, r.Body)
	}

	// Budget: 6 action tokens per task; a has had 2, so 4 more.
	for i := range 4 {
		if r := a.askAction("tickets.delete", `{"ticket":"`+itoa(100+i)+`"}`); r.Status != 201 {
			t.Fatalf("action %d within budget: %d %s", i+3, r.Status, r.Body)
		}
	}
	if r := a.askAction("tickets.delete", `{"ticket":"200"}`); r.Status != 403 || r.json(t)["rule"] != "budgets.actions" {
		t.Fatalf("over the actions budget: %d %s", r.Status, r.Body)
	}
	if r := b.askAction("tickets.delete", `{"ticket":"200"}`); r.Status != 201 {
		t.Fatalf("another task's budget is its own: %d %s", r.Status, r.Body)
	}

	// Revoking the task makes an unused action token useless.
	fresh := b.actionToken("tickets.delete", `{"ticket":"300"}`)
	if r := e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+b.token), true); r.Status != 200 {
		t.Fatalf("revoke: %d", r.Status)
	}
	if r := e.do(http.MethodPost, "/v1/actions/consume", "", "application/x-www-form-urlencoded", strings.NewReader("token="+fresh), true); r.json(t)["consumed"] != false {
		t.Fatalf("action token of a revoked task consumed: %s", r.Body)
	}
	t.Logf("consume calls to Valet: %d (one per sensitive call that reached consumption)", consumes())
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }
