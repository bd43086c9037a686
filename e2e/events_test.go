package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/examples/toolserver"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/toolevents"
	"github.com/valet-dev/valet/verify"
)

// TestToolEventsAndRollback: the example tool server's verifier reports
// each call (without delaying it); the task's events list them (undo body
// never shown), the audit trail and the admin timeline carry tool.called
// without the undo key; a rollback walks the undo webhooks newest first,
// runs each once, refuses a host not allowed; a report after the task
// ended (and after its token expired) is kept as late when a tool server's
// client reports it, refused with the agent's token alone, and one after
// the retention is refused.
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
	testkit.Eventually(t, func() bool { return v.Reports().Sent == 3 }, "3 reports sent")

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

	// Late reports: after the task ended, then after its token expired,
	// then beyond the retention; only a tool server's client may file them.
	if r := e.do(http.MethodPost, "/v1/tasks/"+taskID+"/complete", tok, "", nil, false); r.Status != 200 {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	late := `{"tool":"tickets.read","outcome":"ok","status":200}`
	if r := e.report(taskID, tok, late, false); r.Status != 401 {
		t.Fatalf("a late report with the agent's token alone: %d %s", r.Status, r.Body)
	}
	r = e.report(taskID, tok, late, true)
	if r.Status != 201 || !strings.Contains(string(r.Body), `"late":true`) || !strings.Contains(string(r.Body), `"reported_with":"client"`) {
		t.Fatalf("a report after the task ended: %d %s", r.Status, r.Body)
	}
	e.clock.Advance(11 * time.Minute) // past the token's exp (10m), within the retention (1h)
	if r := e.report(taskID, tok, late, true); r.Status != 201 {
		t.Fatalf("a report after the token expired: %d %s", r.Status, r.Body)
	}
	e.clock.Advance(time.Hour)
	if r := e.report(taskID, tok, late, true); r.Status != 401 {
		t.Fatalf("a report beyond the retention: %d %s", r.Status, r.Body)
	}
	t.Logf("reports: %+v", v.Reports())
}

// report posts a tool-call report with the task token, and with the tool
// server's client credentials when client is set.
func (e *env) report(taskID, tok, body string, client bool) response {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/tasks/"+taskID+"/events", strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	if client {
		req.Header.Set("Valet-Client-Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(clientID+":"+clientSecret)))
	}
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

// TestRevokedTaskCannotFileUndoSteps guards issue 9 #6: once a task is
// revoked (or completed), its token can no longer add "late" events whose
// undo webhooks a responder's rollback would call; a tool server's client
// still can, and the rollback plan shows for each step who reported it,
// whether that principal was revoked since, the method, the URL without
// its query, and a redacted, escaped preview of the body.
func TestRevokedTaskCannotFileUndoSteps(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates, incident: true, rollbackHosts: []string{"127.0.0.1"}})
	undo := func(body string) string {
		b, _ := json.Marshal(map[string]any{"tool": "tickets.comment", "outcome": "ok", "status": 201,
			"undo": map[string]any{"method": "POST", "url": "http://127.0.0.1:9/undo?key=qs-s3cret#frag", "body": body}})
		return string(b)
	}
	agentBody := `{"comment":"c_1","undo_key":"k-s3cret","note":"\u001b[2Jrm \u202egnp.exe"}`

	// While live, the agent's own token may report (a step it chose).
	taskID, tok := e.declareIn("crew", "agent-a", "tickets.read", "tickets.comment")
	if r := e.report(taskID, tok, undo(agentBody), false); r.Status != 201 || !strings.Contains(string(r.Body), `"reported_with":"task_token"`) {
		t.Fatalf("a live report: %d %s", r.Status, r.Body)
	}
	if r := e.report(taskID, tok, undo(`{"c":2}`), true); r.Status != 201 {
		t.Fatalf("a live report by the tool server: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+tok), true); r.Status != 200 {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	// Revoked: the agent's token can no longer add steps, nor list events.
	if r := e.report(taskID, tok, undo(`{"evil":true}`), false); r.Status != 401 {
		t.Fatalf("a report with a revoked task's token: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodGet, "/v1/tasks/"+taskID+"/events", tok, "", nil, false); r.Status != 401 {
		t.Fatalf("events with a revoked task's token: %d %s", r.Status, r.Body)
	}
	if r := e.report(taskID, tok, undo(`{"c":3}`), true); r.Status != 201 || !strings.Contains(string(r.Body), `"late":true`) {
		t.Fatalf("a late report by the tool server: %d %s", r.Status, r.Body)
	}

	// A completed task's token cannot report either.
	doneID, doneTok := e.declareIn("crew", "agent-b", "tickets.read")
	if r := e.do(http.MethodPost, "/v1/tasks/"+doneID+"/complete", doneTok, "", nil, false); r.Status != 200 {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	if r := e.report(doneID, doneTok, `{"tool":"tickets.read","outcome":"ok"}`, false); r.Status != 401 {
		t.Fatalf("a report with a completed task's token: %d %s", r.Status, r.Body)
	}

	responder := e.adminToken("rita", "valet-responders")
	// The events listing strips undo URLs as the audit does.
	if r := e.do(http.MethodGet, "/v1/tasks/"+taskID+"/events", responder, "", nil, false); r.Status != 200 ||
		strings.Contains(string(r.Body), "qs-s3cret") || !strings.Contains(string(r.Body), `"url":"http://127.0.0.1:9/undo"`) {
		t.Fatalf("events as listed: %d %s", r.Status, r.Body)
	}
	r := e.do(http.MethodGet, "/v1/admin/tasks/"+taskID+"/rollback", responder, "", nil, false)
	var plan struct {
		Steps []struct {
			EventID         string `json:"event_id"`
			Reporter        string `json:"reporter"`
			ReportedWith    string `json:"reported_with"`
			ReporterRevoked bool   `json:"reporter_revoked"`
			Late            bool   `json:"late"`
			Undo            struct {
				URL          string `json:"url"`
				Method       string `json:"method"`
				QueryRemoved bool   `json:"query_removed"`
				BodyPreview  string `json:"body_preview"`
				BodyBytes    int    `json:"body_bytes"`
			} `json:"undo"`
		} `json:"steps"`
	}
	if err := json.Unmarshal(r.Body, &plan); r.Status != 200 || err != nil || len(plan.Steps) != 3 {
		t.Fatalf("plan: %d %v %s", r.Status, err, r.Body)
	}
	for _, leak := range []string{"qs-s3cret", "k-s3cret", "frag", "\u001b", "\u202e"} {
		if strings.Contains(string(r.Body), leak) {
			t.Fatalf("the plan shows %q: %s", leak, r.Body)
		}
	}
	late, client, agent := plan.Steps[0], plan.Steps[1], plan.Steps[2] // newest first
	if !late.Late || late.ReportedWith != "client" || late.Reporter != "client:"+clientID || late.ReporterRevoked {
		t.Fatalf("late step: %+v", late)
	}
	if client.ReportedWith != "client" || client.ReporterRevoked {
		t.Fatalf("tool server's step: %+v", client)
	}
	if agent.ReportedWith != "task_token" || agent.Reporter != "agent-a" || !agent.ReporterRevoked {
		t.Fatalf("the revoked agent's step: %+v", agent)
	}
	// The revoked agent's step runs only when the responder confirms it.
	run := "/v1/admin/tasks/" + taskID + "/rollback/" + agent.EventID
	if r := e.do(http.MethodPost, run, responder, "", nil, false); r.Status != 409 || r.json(t)["rule"] != "rollback.confirm" {
		t.Fatalf("unconfirmed step of a revoked reporter: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodPost, run+"?confirm=yes", responder, "", nil, false); r.Status != 400 {
		t.Fatalf("confirm=yes: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodPost, run+"?confirm=revoked_reporter", responder, "", nil, false); r.Status != 200 {
		t.Fatalf("confirmed step of a revoked reporter: %d %s", r.Status, r.Body)
	}
	u := agent.Undo
	if u.Method != "POST" || u.URL != "http://127.0.0.1:9/undo" || !u.QueryRemoved || u.BodyBytes != len(agentBody) ||
		!strings.Contains(u.BodyPreview, `"undo_key":"[redacted]"`) || !strings.Contains(u.BodyPreview, `\u001b[2J`) ||
		!strings.Contains(u.BodyPreview, `\u202e`) || !strings.Contains(u.BodyPreview, `"comment":"c_1"`) {
		t.Fatalf("undo as planned: %+v", u)
	}
}

// TestReportsOverTheCapAreNotAudited guards issue 9's low: a report refused
// because the task already has 1000 events answers 409 and leaves no
// tool.called in the audit trail (before, it was audited and then refused).
func TestReportsOverTheCapAreNotAudited(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates})
	taskID, tok := e.declareIn("crew", "agent-a", "tickets.read")
	rep := toolevents.EventReport{Tool: "tickets.read", Outcome: "ok"}
	ctx := context.Background()
	for i := range 1000 {
		if _, err := e.events.ReportEvent(ctx, tok, toolevents.ReportAuth{TaskID: taskID}, rep); err != nil {
			t.Fatalf("report %d: %v", i+1, err)
		}
	}
	if c := strings.Count(e.audit.String(), `"type":"tool.called"`); c != 1000 {
		t.Fatalf("%d tool.called audit events, want 1000", c)
	}
	body, _ := json.Marshal(rep)
	if r := e.report(taskID, tok, string(body), false); r.Status != 409 {
		t.Fatalf("report 1001: %d %s", r.Status, r.Body)
	}
	if c := strings.Count(e.audit.String(), `"type":"tool.called"`); c != 1000 {
		t.Fatalf("%d tool.called audit events after a refused report, want 1000", c)
	}
}
