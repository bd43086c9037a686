package e2e

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/stepup"
)

// opsTask declares an unbound task of template ops for agent.
func (e *env) opsTask(agent string) *agentSession {
	e.t.Helper()
	r := e.declare(e.identity(agent), `{"template":"ops","intent":"purge duplicates","tools":["tickets.read","tickets.purge"]}`)
	if r.Status != http.StatusCreated {
		e.t.Fatalf("declare: %d %s", r.Status, r.Body)
	}
	m := r.json(e.t)
	return &agentSession{e: e, taskID: m["task"].(map[string]any)["id"].(string),
		token: m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)}
}

// TestApprovalCapsAndListing guards issue 9's approval lows: pending
// approvals are capped per task and per agent (429, rule
// approvals.max_pending, naming which), a decision frees a place, and
// GET /v1/approvals filters (agent, template, task_id, state) and pages
// (limit, cursor) in created_at-then-id order, so one agent's flood cannot
// hide another's approval. The approval webhook's redirect is not
// followed.
func TestApprovalCapsAndListing(t *testing.T) {
	var followed, hooked atomic.Int64
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { followed.Add(1) }))
	t.Cleanup(elsewhere.Close)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hooked.Add(1)
		http.Redirect(w, r, elsewhere.URL+"/stolen", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(hook.Close)
	e := newEnv(t, envOptions{templates: actionTemplates, incident: true, agent: func(c *server.StepUpOptions) {
		actionAgentConfig(c)
		c.Approvals = stepup.ApprovalConfig{Clients: []clientauth.Client{{ID: clientID, SecretSHA256: sha(clientSecret)}},
			MaxPendingPerTask: 2, MaxPendingPerAgent: 3, WebhookURL: hook.URL + "/hook"}
	}})
	file := func(a *agentSession, want int, wantText string) string {
		t.Helper()
		r := a.askAction("tickets.purge", `{"ticket":"7"}`)
		if r.Status != want || !strings.Contains(string(r.Body), wantText) {
			t.Fatalf("file an approval: %d %s, want %d with %q", r.Status, r.Body, want, wantText)
		}
		if want != http.StatusAccepted {
			return ""
		}
		return r.json(t)["approval_id"].(string)
	}
	a1, a2, b := e.opsTask("agent-a"), e.opsTask("agent-a"), e.opsTask("agent-b")
	first := file(a1, 202, "")
	file(a1, 202, "")
	file(a1, 429, `"rule":"approvals.max_pending"`) // the task's cap (2)
	file(a2, 202, "")
	file(a2, 429, "agent agent-a already has 3 approvals pending") // the agent's cap (3)
	file(b, 202, "")                                               // another agent is not held back
	if r := e.do(http.MethodPost, "/v1/approvals/"+first+"/deny", "", "", nil, true); r.Status != 200 {
		t.Fatalf("deny: %d %s", r.Status, r.Body)
	}
	file(a2, 202, "") // the decision freed a place
	if c := strings.Count(e.audit.String(), `"type":"approval.requested"`); c != 5 {
		t.Fatalf("%d approval.requested audit events, want 5 (refusals are not filed)", c)
	}

	list := func(q url.Values) (ids []string, tasks []string, next string) {
		t.Helper()
		r := e.do(http.MethodGet, "/v1/approvals?"+q.Encode(), "", "", nil, true)
		if r.Status != 200 {
			t.Fatalf("list %s: %d %s", q.Encode(), r.Status, r.Body)
		}
		m := r.json(t)
		for _, x := range m["approvals"].([]any) {
			a := x.(map[string]any)
			ids, tasks = append(ids, a["id"].(string)), append(tasks, a["task_id"].(string))
		}
		next, _ = m["next_cursor"].(string)
		return
	}
	all, _, next := list(url.Values{})
	if len(all) != 4 || next != "" {
		t.Fatalf("pending: %v next %q", all, next)
	}
	var paged []string
	q := url.Values{"limit": {"1"}}
	for range 10 {
		ids, _, next := list(q)
		paged = append(paged, ids...)
		if next == "" {
			break
		}
		q.Set("cursor", next)
	}
	if strings.Join(paged, ",") != strings.Join(all, ",") {
		t.Fatalf("pages of 1: %v, want %v", paged, all)
	}
	if ids, tasks, _ := list(url.Values{"agent": {"agent-b"}}); len(ids) != 1 || tasks[0] != b.taskID {
		t.Fatalf("agent-b's approvals: %v %v", ids, tasks)
	}
	if ids, _, _ := list(url.Values{"task_id": {a2.taskID}}); len(ids) != 2 {
		t.Fatalf("a2's approvals: %v", ids)
	}
	if ids, _, _ := list(url.Values{"template": {"ops"}, "limit": {"1000"}}); len(ids) != 4 {
		t.Fatalf("ops approvals: %v", ids)
	}
	if ids, _, _ := list(url.Values{"template": {"other"}}); len(ids) != 0 {
		t.Fatalf("another template's approvals: %v", ids)
	}
	if ids, _, _ := list(url.Values{"state": {"denied"}}); len(ids) != 1 || ids[0] != first {
		t.Fatalf("denied approvals: %v", ids)
	}
	for _, bad := range []string{"limit=0", "limit=1001", "limit=x", "cursor=%25%25%25", "cursor=bm9wZQ", "state=done", "agent=" + strings.Repeat("a", 300)} {
		if r := e.do(http.MethodGet, "/v1/approvals?"+bad, "", "", nil, true); r.Status != 400 {
			t.Fatalf("list ?%.40s: %d %s", bad, r.Status, r.Body)
		}
	}

	// The webhook answered every new approval with a redirect elsewhere;
	// Valet logged the 307 and went nowhere else.
	testkit.Eventually(t, func() bool { return strings.Count(e.inc.logs.String(), "approval webhook refused") == 5 }, "5 refused webhooks")
	if hooked.Load() != 5 || followed.Load() != 0 {
		t.Fatalf("webhook called %d times, redirect followed %d times", hooked.Load(), followed.Load())
	}
}
