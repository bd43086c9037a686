package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/examples/toolserver"
	"github.com/valet-dev/valet/verify"
)

// TestToolEventsAndRollback: the example tool server's verifier reports
// each call (without delaying it); the task's events list them (undo body
// never shown), the audit trail and the admin timeline carry tool.called
// without the undo key; a rollback walks the undo webhooks newest first,
// runs each once, refuses a host not allowed; a report after the task
// ended (and after its token expired) is kept as late, and one after the
// retention is refused.
func TestToolEventsAndRollback(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates, incident: true, rollbackHosts: []string{"127.0.0.1"}})
	v, err := verify.New(verify.Config{Issuer: e.srv.URL, Audience: "https://tools.example.com", ClientID: clientID,
		ClientSecret: clientSecret, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go v.Run(ctx)
	tsrv := toolserver.New(v)
	ts := httptest.NewServer(tsrv)
	t.Cleanup(ts.Close)

	taskID, tok := e.declareIn("crew", "agent-a", "tickets.read", "tickets.comment")
	for _, c := range []struct{ method, path string }{{"GET", "/tickets/1"}, {"POST", "/tickets/1/comments"}, {"POST", "/tickets/1/comments"}} {
		if s := call(t, ts, tok, c.method, c.path); s/100 != 2 {
			t.Fatalf("%s %s: %d", c.method, c.path, s)
		}
	}
	if n := len(tsrv.Comments("1")); n != 2 {
		t.Fatalf("%d comments, want 2", n)
	}
	waitFor(t, func() bool { return v.Reports().Sent == 3 }, "3 reports sent")

	r := e.do(http.MethodGet, "/v1/tasks/"+taskID+"/events", tok, "", nil, false)
	if r.Status != 200 {
		t.Fatalf("events: %d %s", r.Status, r.Body)
	}
	var list struct {
		Events []map[string]any `json:"events"`
	}
	_ = json.Unmarshal(r.Body, &list)
	if len(list.Events) != 3 || list.Events[0]["tool"] != "tickets.read" || list.Events[1]["tool"] != "tickets.comment" {
		t.Fatalf("events: %s", r.Body)
	}
	undo, _ := list.Events[1]["undo"].(map[string]any)
	if undo["method"] != "DELETE" || undo["body_sha256"] == nil || undo["body"] != nil {
		t.Fatalf("undo as listed: %v", undo)
	}
	if list.Events[1]["reporter"] != "client:"+clientID || list.Events[1]["agent"] != "agent-a" {
		t.Fatalf("reporter/agent: %v", list.Events[1])
	}
	if strings.Contains(string(r.Body), "undo_key") || strings.Contains(e.audit.String(), "undo_key") || strings.Contains(e.inc.logs.String(), "undo_key") {
		t.Fatal("an undo body reached the listing, the audit trail or the log")
	}
	if c := strings.Count(e.audit.String(), `"type":"tool.called"`); c != 3 {
		t.Fatalf("%d tool.called audit events, want 3", c)
	}
	viewer := e.adminToken("vera", "valet-viewers")
	if r := e.do(http.MethodGet, "/v1/tasks/"+taskID+"/events", viewer, "", nil, false); r.Status != 200 || !strings.Contains(string(r.Body), "tickets.comment") {
		t.Fatalf("events as an admin viewer: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodGet, "/v1/admin/tasks/"+taskID+"/timeline", viewer, "", nil, false); !strings.Contains(string(r.Body), `"tool.called"`) {
		t.Fatalf("timeline lacks tool.called: %s", r.Body)
	}
	// A viewer cannot roll back.
	if r := e.do(http.MethodGet, "/v1/admin/tasks/"+taskID+"/rollback", viewer, "", nil, false); r.Status != 403 {
		t.Fatalf("rollback plan as a viewer: %d", r.Status)
	}

	// A report whose undo names a host not allowed.
	rep := `{"tool":"tickets.comment","outcome":"ok","status":201,"side_effect":"posted elsewhere","undo":{"method":"DELETE","url":"http://203.0.113.9/x?key=s3cret"}}`
	if r := e.do(http.MethodPost, "/v1/tasks/"+taskID+"/events", tok, "application/json", strings.NewReader(rep), false); r.Status != 201 {
		t.Fatalf("report: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodPost, "/v1/tasks/"+taskID+"/events", tok, "application/json",
		strings.NewReader(`{"tool":"tickets.delete","outcome":"ok"}`), false); r.Status != 403 {
		t.Fatalf("a report of a tool not granted: %d %s", r.Status, r.Body)
	}

	responder := e.adminToken("rita", "valet-responders")
	r = e.do(http.MethodGet, "/v1/admin/tasks/"+taskID+"/rollback", responder, "", nil, false)
	var plan struct {
		Steps []struct {
			EventID string `json:"event_id"`
			Allowed bool   `json:"allowed"`
			State   string `json:"state"`
		} `json:"steps"`
	}
	_ = json.Unmarshal(r.Body, &plan)
	if r.Status != 200 || len(plan.Steps) != 3 || plan.Steps[0].Allowed || !plan.Steps[1].Allowed ||
		plan.Steps[1].EventID != list.Events[2]["id"] || plan.Steps[2].EventID != list.Events[1]["id"] {
		t.Fatalf("plan (newest first, first not allowed): %d %s", r.Status, r.Body)
	}
	base := "/v1/admin/tasks/" + taskID + "/rollback/"
	if r := e.do(http.MethodPost, base+plan.Steps[0].EventID, responder, "", nil, false); r.Status != 403 || !strings.Contains(string(r.Body), "rollback.allowed_hosts") {
		t.Fatalf("undo to a host not allowed: %d %s", r.Status, r.Body)
	}
	for _, st := range plan.Steps[1:] {
		r := e.do(http.MethodPost, base+st.EventID, responder, "", nil, false)
		if r.Status != 200 || !strings.Contains(string(r.Body), `"state":"done"`) {
			t.Fatalf("undo step: %d %s", r.Status, r.Body)
		}
	}
	if n := len(tsrv.Comments("1")); n != 0 {
		t.Fatalf("%d comments after the rollback, want 0", n)
	}
	if r := e.do(http.MethodPost, base+plan.Steps[1].EventID, responder, "", nil, false); r.Status != 409 {
		t.Fatalf("an undo run twice: %d %s", r.Status, r.Body)
	}
	if c := strings.Count(e.audit.String(), `"type":"rollback.step"`); c != 5 { // 1 denied + 2 × (started, ok)
		t.Fatalf("%d rollback.step audit events, want 5", c)
	}
	if strings.Contains(e.audit.String(), "s3cret") || strings.Contains(e.inc.logs.String(), "s3cret") {
		t.Fatal("an undo URL's query reached the audit trail or the log")
	}

	// After the task ended the agent's own token reports nothing (the
	// gate: only live tasks report, issue 9 findings 2 and 6), nor later.
	if r := e.do(http.MethodPost, "/v1/tasks/"+taskID+"/complete", tok, "", nil, false); r.Status != 200 {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	late := `{"tool":"tickets.read","outcome":"ok","status":200}`
	if r := e.do(http.MethodPost, "/v1/tasks/"+taskID+"/events", tok, "application/json", strings.NewReader(late), false); r.Status != 401 {
		t.Fatalf("an agent's report after the task ended: %d %s", r.Status, r.Body)
	}
	e.clock.Advance(11 * time.Minute) // past the token's exp (10m), within the retention (1h)
	if r := e.do(http.MethodPost, "/v1/tasks/"+taskID+"/events", tok, "application/json", strings.NewReader(late), false); r.Status != 401 {
		t.Fatalf("an agent's report after the token expired: %d %s", r.Status, r.Body)
	}
	t.Logf("reports: %+v", v.Reports())
}

// waitFor polls a condition of background work, for at most 5 s.
func waitFor(t *testing.T, ok func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // bounded polling of real background work
	}
}
