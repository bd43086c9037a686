package server

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/ssf"
	"github.com/valet-dev/valet/stepup"
)

// approvalRules: an ops template whose sensitive tool needs no human
// (rule policy), and a monitor rule that, on a second action request in a
// minute, makes the agent's sensitive actions need approval for 10 minutes
// and sends the firing out as a CAEP risk-level-change SET.
const approvalRules = `
  - name: ops
    principals: [{issuer: test}]
    ttl: {default: 1m, max: 5m}
    tools: [tickets.read, tickets.delete]
    audiences: [https://tools.example.com]
    sensitive_tools:
      - tool: tickets.delete
        rule: policy
        condition: 'true'
monitors:
  - name: action-burst
    when: 'agent.action_requests_per_minute >= 2'
    action: require_approval
    for: 10m
    ssf: true
`

// TestMonitorRequiresApprovalThroughTheServer: after the action-burst rule
// fires for an agent, its next sensitive action (whose template asks for no
// human) answers 202 pending with an approval that names the rule; another
// agent is not affected; the trigger, the requirement and the approval show
// in the task's timeline; approving it hands out the token and clears the
// requirement (the action after it is granted at once, audited as
// approval.requirement_cleared). The firing also goes out as a CAEP
// risk-level-change SET, by poll and by push.
func TestMonitorRequiresApprovalThroughTheServer(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	o, ln, idp, _ := testOptions(t, clock)
	o.Now = time.Now
	r := withRedis(t, &o, time.Hour)
	trail := r.trail
	var err error
	if o.Templates, err = policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(testTemplate + approvalRules)}}, []string{"test"}); err != nil {
		t.Fatal(err)
	}
	o.Auditors = []broker.Auditor{audit.NewLog(trail)}
	o.Monitor = &MonitorOptions{}
	o.Records = r.ledger
	actions, ok := o.Tokens.(stepup.ActionTokens)
	if !ok {
		t.Fatal("the test token issuer mints no action tokens")
	}
	secret := sha256.Sum256([]byte("approver-secret"))
	o.StepUp = StepUpOptions{Actions: actions, Approvals: stepup.ApprovalConfig{Clients: []clientauth.Client{{ID: "approver", SecretSHA256: secret}}}}

	// A push receiver for the risk SETs.
	var mu sync.Mutex
	var pushed []string
	push := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		pushed = append(pushed, string(b))
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(push.Close)
	pu, _ := url.Parse(push.URL)
	store, err := revocation.NewRedisSSFStore(r.rc, "valet")
	if err != nil {
		t.Fatal(err)
	}
	o.SSF = &SSFOptions{Store: store, IssuerURLs: map[string]string{"test": "https://agents.example"}, PushHosts: []string{pu.Host}}

	s, err := New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = s.Run(ctx, ln) }()
	call := func(method, path, token, body string, basic bool) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, o.PublicURL+path, strings.NewReader(body))
		switch {
		case basic:
			req.SetBasicAuth("approver", "approver-secret")
		case token != "":
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&m)
		return resp.StatusCode, m
	}
	testkit.Eventually(t, func() bool { c, _ := call("GET", "/healthz", "", "", false); return c == 200 }, "the server serves")
	adminTok := r.admins.Token(t, map[string]any{"aud": "valet-admin", "sub": "ops"})
	streamBody := func(delivery string) string {
		return `{"aud":"urn:siem","events_requested":["` + ssf.EventRiskLevelChange + `"],"delivery":` + delivery + `}`
	}
	code, m := call("POST", "/ssf/streams", adminTok, streamBody(`{"method":"urn:ietf:rfc:8936"}`), false)
	if code != http.StatusCreated {
		t.Fatalf("poll stream: %d %v", code, m)
	}
	pollStream := m["stream_id"].(string)
	if code, m := call("POST", "/ssf/streams", adminTok, streamBody(`{"method":"urn:ietf:rfc:8935","endpoint_url":"`+push.URL+`/events"}`), false); code != http.StatusCreated {
		t.Fatalf("push stream: %d %v", code, m)
	}

	declare := func(sub string) (taskID, token string) {
		t.Helper()
		code, m := call("POST", "/v1/tasks", idp.Token(t, map[string]any{"sub": sub}),
			`{"template":"ops","intent":"clean up duplicates","tools":["tickets.delete"],"ttl_seconds":60}`, false)
		if code != http.StatusCreated {
			t.Fatalf("declare %s: %d %v", sub, code, m)
		}
		return m["task"].(map[string]any)["id"].(string), m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
	}
	ask := func(taskID, token string) (int, map[string]any) {
		t.Helper()
		return call("POST", "/v1/tasks/"+taskID+"/actions", token, `{"tool":"tickets.delete","args":{"ticket":"7"}}`, false)
	}
	timeline := func(taskID string) map[string]broker.Event {
		evs, _ := trail.Timeline(t.Context(), taskID)
		out := map[string]broker.Event{}
		for _, e := range evs {
			out[e.Type] = e
		}
		return out
	}

	task, tok := declare("busy-agent")
	for i := range 2 {
		if code, m := ask(task, tok); code != http.StatusCreated {
			t.Fatalf("action %d before the rule fires: %d %v", i, code, m)
		}
	}
	testkit.Eventually(t, func() bool { _, ok := timeline(task)["approval.required"]; return ok }, "the rule requires approval")
	if e := timeline(task)["monitor.triggered"]; e.Rule != "action-burst" || e.Outcome != "require_approval" {
		t.Fatalf("monitor.triggered = %+v", e)
	}
	if e := timeline(task)["approval.required"]; e.Rule != "action-burst" || e.Actor != "monitor" || e.Detail["agent"] != "busy-agent" {
		t.Fatalf("approval.required = %+v", e)
	}

	code, m = ask(task, tok)
	if code != http.StatusAccepted {
		t.Fatalf("action under the requirement: %d %v, want 202 pending", code, m)
	}
	approvalID := m["approval_id"].(string)
	// Another agent's actions are not held.
	otherTask, otherTok := declare("calm-agent")
	if code, m := ask(otherTask, otherTok); code != http.StatusCreated {
		t.Fatalf("another agent's action: %d %v", code, m)
	}
	code, m = call("GET", "/v1/approvals?task_id="+task, "", "", true)
	if code != 200 {
		t.Fatalf("list approvals: %d %v", code, m)
	}
	list := m["approvals"].([]any)
	if len(list) != 1 || list[0].(map[string]any)["required_by"] != "action-burst" {
		t.Fatalf("approvals = %v", list)
	}
	if e := timeline(task)["approval.requested"]; e.Rule != "monitor action-burst" || e.Detail["required_by"] != "action-burst" {
		t.Fatalf("approval.requested = %+v", e)
	}
	if code, m := call("GET", "/v1/tasks/"+task+"/actions/"+approvalID, tok, "", false); code != http.StatusAccepted {
		t.Fatalf("poll before the decision: %d %v", code, m)
	}
	if code, m := call("POST", "/v1/approvals/"+approvalID+"/approve", "", `{"reason":"looked at it"}`, true); code != 200 {
		t.Fatalf("approve: %d %v", code, m)
	}
	if code, m := call("GET", "/v1/tasks/"+task+"/actions/"+approvalID, tok, "", false); code != http.StatusCreated || m["action_token"] == "" {
		t.Fatalf("poll after approval: %d %v", code, m)
	}
	if e := timeline(task)["approval.requirement_cleared"]; e.Actor != "approver:approver" || e.Rule != "action-burst" {
		t.Fatalf("approval.requirement_cleared = %+v", e)
	}
	// Cleared: the next action needs no human (the rule rests for a minute).
	if code, m := ask(task, tok); code != http.StatusCreated {
		t.Fatalf("action after the approval: %d %v, want 201", code, m)
	}

	// The firing went out as a risk-level-change SET, polled and pushed.
	check := func(raw, how string) {
		t.Helper()
		parts := strings.Split(raw, ".")
		if len(parts) != 3 {
			t.Fatalf("%s: not a JWS: %q", how, raw)
		}
		p, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var set map[string]any
		_ = json.Unmarshal(p, &set)
		ev, ok := set["events"].(map[string]any)[ssf.EventRiskLevelChange].(map[string]any)
		sub, _ := set["sub_id"].(map[string]any)
		user, _ := sub["user"].(map[string]any)
		session, _ := sub["session"].(map[string]any)
		if !ok || ev["current_level"] != "HIGH" || ev["principal"] != "USER" || !strings.Contains(ev["risk_reason"].(string), "action-burst") ||
			user["sub"] != "busy-agent" || user["iss"] != "https://agents.example" || session["id"] != task || set["aud"] != "urn:siem" {
			t.Fatalf("%s SET = %v", how, set)
		}
	}
	var polled string
	testkit.Eventually(t, func() bool {
		code, m := call("POST", "/ssf/poll/"+pollStream, adminTok, `{"returnImmediately":true}`, false)
		if code != 200 {
			return false
		}
		for _, raw := range m["sets"].(map[string]any) {
			polled = raw.(string)
			return true
		}
		return false
	}, "the risk SET is polled")
	check(polled, "polled")
	testkit.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(pushed) > 0 }, "the risk SET is pushed")
	mu.Lock()
	check(pushed[0], "pushed")
	mu.Unlock()

	// An approver may also end a requirement without a pending approval.
	task2, tok2 := declare("second-agent")
	for range 2 {
		_, _ = ask(task2, tok2)
	}
	testkit.Eventually(t, func() bool { _, ok := timeline(task2)["approval.required"]; return ok }, "the rule requires approval again")
	if code, m := ask(task2, tok2); code != http.StatusAccepted {
		t.Fatalf("second agent under the requirement: %d %v", code, m)
	}
	clear := func(body string, basic bool) (int, map[string]any) {
		t.Helper()
		return call("POST", "/v1/approval-requirements/clear", "", body, basic)
	}
	if code, _ := clear(`{"issuer":"test","agent":"second-agent"}`, false); code != http.StatusUnauthorized {
		t.Fatalf("clear without approver credentials: %d, want 401", code)
	}
	if code, m := clear(`{"issuer":"test"}`, true); code != http.StatusBadRequest || m["field"] != "agent" {
		t.Fatalf("clear naming no agent: %d %v", code, m)
	}
	if code, m := clear(`{"issuer":"test","agent":"second-agent","reason":"on call checked"}`, true); code != 200 || m["cleared"] != true {
		t.Fatalf("clear: %d %v", code, m)
	}
	if code, m := clear(`{"issuer":"test","agent":"second-agent"}`, true); code != 200 || m["cleared"] != false {
		t.Fatalf("clear again: %d %v", code, m)
	}
	if code, m := ask(task2, tok2); code != http.StatusCreated {
		t.Fatalf("second agent after the clear: %d %v, want 201", code, m)
	}
}
