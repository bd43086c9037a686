package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/examples/toolserver"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/stepup"
	"github.com/valet-dev/valet/verify"
)

const approvalTemplates = `
templates:
  - name: ops
    principals: [{issuer: test}]
    ttl: {default: 10m, max: 15m}
    tools: [tickets.read]
    audiences: [https://tools.example.com]
    sensitive_tools:
      - tool: tickets.delete
        rule: approval
        condition: 'resource.env == "prod"'
        resource: db:tickets
`

// approvalBroker is a whole broker on real Redis with an injected clock,
// an approver client, a webhook receiver and the example tool server.
type approvalBroker struct {
	url, tools string
	clock      *testkit.Clock
	idp        *oidctest.Issuer
	audit      *lockedBuffer
	hooks      chan string
}

func newApprovalBroker(t *testing.T) *approvalBroker {
	b := &approvalBroker{clock: testkit.NewClock(time.Now()), idp: oidctest.New(t), audit: &lockedBuffer{}, hooks: make(chan string, 16)}
	rc, err := revocation.NewClient(redistest.Start(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	ledger, err := revocation.NewRedisLedger(rc, revocation.RedisOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.hooks <- string(body)
	}))
	t.Cleanup(hook.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.url = "http://" + ln.Addr().String()
	key, _ := issuers.GenerateSigningKey("EdDSA")
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: b.url, Keys: []issuers.SigningKey{{Private: key}}}, b.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := identity.New(context.Background(), []identity.IssuerConfig{{Name: "test", IssuerURL: b.idp.URL(),
		Audiences: []string{"valet"}}}, identity.Options{Now: b.clock.Now, SelfIssuer: b.url})
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(approvalTemplates)}}, []string{"test"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(context.Background(), server.Options{PublicURL: b.url, Identity: verifier, Tokens: tokens, Ledger: ledger, Loss: ledger,
		Auditors: []broker.Auditor{audit.NewLog(b.audit)}, Templates: set, Now: b.clock.Now,
		Clients: []clientauth.Client{{ID: "tool-server", SecretSHA256: sha256Of("tool-server-secret-123")}},
		Agent:   broker.AgentConfig{Limiter: ledger}, Records: ledger,
		StepUp: server.StepUpOptions{
			Actions:   tokens,
			Resources: map[string]map[string]string{"db:tickets": {"env": "prod"}},
			Approvals: stepup.ApprovalConfig{Timeout: 2 * time.Minute, WebhookURL: hook.URL,
				Clients: []clientauth.Client{{ID: "alice", SecretSHA256: sha256Of("alice-approver-secret")}}},
		},
		ReapInterval: -1, // the test moves its clock; nothing reaped it before
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serving: %v", err)
		}
	})
	v, err := verify.New(verify.Config{Issuer: b.url, Audience: "https://tools.example.com", ClientID: "tool-server",
		ClientSecret: "tool-server-secret-123", Now: b.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(toolserver.New(v))
	t.Cleanup(ts.Close)
	b.tools = ts.URL
	return b
}

func (b *approvalBroker) call(t *testing.T, method, url, token, body string, header map[string]string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// cli runs `valet approvals ...` as an approver and returns its exit code
// and output.
func (b *approvalBroker) cli(args ...string) (int, string, string) {
	var out, errOut strings.Builder
	env := map[string]string{"VALET_SERVER": b.url, "VALET_APPROVER_CLIENT": "alice", "VALET_APPROVER_SECRET": "alice-approver-secret"}
	code := run(context.Background(), append([]string{"valet", "approvals"}, args...), func(k string) string { return env[k] }, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestApprovalFlowThroughCLI: pending, approved through the CLI, the action
// token handed out once and used once at the tool server; a pending
// approval past its timeout is denied; a denied one is a 403. Every
// decision is audited with who made it.
func TestApprovalFlowThroughCLI(t *testing.T) {
	b := newApprovalBroker(t)
	id := b.idp.Token(t, map[string]any{"sub": "agent-a"}, oidctest.WithNow(b.clock.Now()))
	st, m := b.call(t, http.MethodPost, b.url+"/v1/tasks", id, `{"template":"ops","intent":"remove spam ticket 5","tools":["tickets.read","tickets.delete"]}`, nil)
	if st != 201 {
		t.Fatalf("declare: %d %v", st, m)
	}
	task := m["task"].(map[string]any)["id"].(string)
	tok := m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
	ask := func(ticket string) string {
		t.Helper()
		st, m := b.call(t, http.MethodPost, b.url+"/v1/tasks/"+task+"/actions", tok,
			`{"tool":"tickets.delete","args":{"ticket":"`+ticket+`"},"context":{"note":"trust me"}}`, nil)
		if st != 202 || m["status"] != "pending" {
			t.Fatalf("action request: %d %v", st, m)
		}
		return m["approval_id"].(string)
	}
	poll := func(approval string) (int, map[string]any) {
		return b.call(t, http.MethodGet, b.url+"/v1/tasks/"+task+"/actions/"+approval, tok, "", nil)
	}

	// 1. Pending, approved, used once.
	apr := ask("5")
	select {
	case hook := <-b.hooks:
		if !strings.Contains(hook, apr) || strings.Contains(hook, `"5"`) {
			t.Fatalf("webhook body %s: want the approval id and no argument values", hook)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no webhook for the new approval")
	}
	code, out, errOut := b.cli("ls")
	if code != 0 || !strings.Contains(out, apr) || !strings.Contains(out, `{"ticket":"5"}`) || !strings.Contains(out, "remove spam ticket 5") || !strings.Contains(out, "agent-a") {
		t.Fatalf("approvals ls: %d\n%s%s", code, out, errOut)
	}
	t.Logf("valet approvals ls:\n%s", out)
	code, out, _ = b.cli("ls", "-o", "json")
	checkJSON(t, "valet approvals ls", out, specSchema(t, loadSpec(t), "GET", "/v1/approvals", 200))
	var listed struct{ Approvals []stepup.Approval }
	if code != 0 || json.Unmarshal([]byte(out), &listed) != nil || len(listed.Approvals) != 1 ||
		listed.Approvals[0].Resource["env"] != "prod" || listed.Approvals[0].Context["note"] != "trust me" {
		t.Fatalf("approvals ls -o json: %d %s", code, out)
	}
	if code, out, _ := b.cli("ls", "--agent", "agent-a", "--template", "ops"); code != 0 || !strings.Contains(out, apr) {
		t.Fatalf("approvals ls --agent agent-a: %d %s", code, out)
	}
	if code, out, _ := b.cli("ls", "--agent", "someone-else"); code != 0 || strings.Contains(out, apr) {
		t.Fatalf("approvals ls --agent someone-else: %d %s", code, out)
	}
	if st, m := poll(apr); st != 202 || m["status"] != "pending" {
		t.Fatalf("poll while pending: %d %v", st, m)
	}
	if code, out, errOut := b.cli("approve", apr); code != 0 || !strings.Contains(out, "approved by approver:alice") {
		t.Fatalf("approvals approve: %d %s %s", code, out, errOut)
	}
	st, m = poll(apr)
	if st != 201 {
		t.Fatalf("poll after approval: %d %v", st, m)
	}
	action := m["action_token"].(string)
	if st, m := poll(apr); st != 409 {
		t.Fatalf("second poll after approval: %d %v, want 409 (handed out once)", st, m)
	}
	del := func(ticket, action string) int {
		st, _ := b.call(t, http.MethodDelete, b.tools+"/tickets/"+ticket, tok, "", map[string]string{"Valet-Action": action})
		return st
	}
	if st := del("5", action); st != 200 {
		t.Fatalf("using the approved action: %d", st)
	}
	if st := del("5", action); st != 403 {
		t.Fatalf("using it again: %d, want 403", st)
	}

	// 2. Pending past the timeout: denied.
	late := ask("6")
	b.clock.Advance(2*time.Minute + time.Second)
	if st, m := poll(late); st != 403 || m["rule"] != "approval" {
		t.Fatalf("poll after the timeout: %d %v", st, m)
	}
	if code, out, _ := b.cli("ls"); code != 0 || strings.Contains(out, late) {
		t.Fatalf("an expired approval is still listed: %s", out)
	}
	if code, _, errOut := b.cli("approve", late); code != 1 || !strings.Contains(errOut, "409") {
		t.Fatalf("approving an expired approval: %d %s", code, errOut)
	}

	// 3. Denied: 403.
	no := ask("7")
	if code, out, errOut := b.cli("deny", no, "--reason", "not during the freeze"); code != 0 || !strings.Contains(out, "denied by approver:alice") {
		t.Fatalf("approvals deny: %d %s %s", code, out, errOut)
	}
	if st, m := poll(no); st != 403 || m["rule"] != "approval" {
		t.Fatalf("poll after denial: %d %v", st, m)
	}

	// 4. approve and deny -o json print the API's answer (openapi.yaml).
	for _, verb := range []string{"approve", "deny"} {
		code, out, errOut := b.cli(verb, ask("8-"+verb), "-o", "json")
		if code != 0 {
			t.Fatalf("approvals %s -o json: %d %s", verb, code, errOut)
		}
		v := checkJSON(t, "valet approvals "+verb, out, specSchema(t, loadSpec(t), "POST", "/v1/approvals/{id}/"+verb, 200))
		if a, _ := v["approval"].(map[string]any); a["state"] != map[string]string{"approve": "approved", "deny": "denied"}[verb] {
			t.Fatalf("approvals %s -o json: %s", verb, out)
		}
	}

	log := b.audit.String()
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var r struct{ Event broker.Event }
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		seen[r.Event.Type+" by "+r.Event.Actor] = true
	}
	for _, want := range []string{"approval.approved by approver:alice", "approval.expired by valet",
		"approval.denied by approver:alice", "approval.issued by agent-a", "action.consumed by client:tool-server"} {
		if !seen[want] {
			t.Errorf("audit lacks %s (has %v)", want, seen)
		}
	}
	if strings.Contains(log, `"ticket":"5"`) {
		t.Error("an argument value reached the audit log")
	}
	if code, _, errOut := b.cli("ls", "--secret", "wrong-secret-value"); code != 1 || !strings.Contains(errOut, `did not accept approver client "alice" with that secret`) {
		t.Errorf("a wrong approver secret: exit %d, want 1 and a message saying so: %s", code, errOut)
	}
}
