package server

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/ssf"
	"github.com/valet-dev/valet/verify"
)

// pathCounter counts a verifier's calls to Valet by path.
type pathCounter struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *pathCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	path := r.URL.Path
	if strings.HasPrefix(path, "/ssf/poll/") {
		path = "/ssf/poll"
	}
	c.calls[path]++
	c.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

// checking counts the calls a check can make (everything but the polls).
func (c *pathCounter) checking() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for p, k := range c.calls {
		if p != "/ssf/poll" {
			n += k
		}
	}
	return n
}

func (c *pathCounter) get(p string) int { c.mu.Lock(); defer c.mu.Unlock(); return c.calls[p] }

func (c *pathCounter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fmt.Sprint(c.calls)
}

// TestVerifierFollowsSSFStream: a tool server's verifier following Valet's
// SSF poll stream (RFC 8936) instead of the revocation feed checks by
// introspection until the stream is live, then accepts a live token with 0
// calls to Valet per warm check, and refuses it once its task is revoked
// (the CAEP session-revoked and credential-change SETs), still with 0
// calls per check; a frozen agent's other token is refused too (RISC
// account-disabled). All against the assembled server on a real Redis.
func TestVerifierFollowsSSFStream(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	o, ln, idp, _ := testOptions(t, clock)
	o.Now = time.Now
	r := withRedis(t, &o, 50*time.Millisecond)
	o.Auditors = []broker.Auditor{audit.NewLog(r.trail)}
	secret := sha256.Sum256([]byte("tool-secret"))
	o.Clients = []clientauth.Client{{ID: "tools", SecretSHA256: secret}}
	store, err := revocation.NewRedisSSFStore(r.rc, "valet")
	if err != nil {
		t.Fatal(err)
	}
	o.SSF = &SSFOptions{Store: store, IssuerURLs: map[string]string{"test": idp.URL()}}
	s, err := New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = s.Run(ctx, ln) }()
	call := func(method, path, auth, ctype, body string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, o.PublicURL+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
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
	testkit.Eventually(t, func() bool { c, _ := call("GET", "/healthz", "", "", ""); return c == 200 }, "the server serves")
	adminAuth := "Bearer " + r.admins.Token(t, map[string]any{"aud": "valet-admin", "sub": "tool-server"})
	code, m := call("POST", "/ssf/streams", adminAuth, "application/json", `{"aud":"urn:tool-server","events_requested":["`+
		ssf.EventSessionRevoked+`","`+ssf.EventCredentialChange+`","`+ssf.EventAccountDisabled+`","`+ssf.EventAccountEnabled+`"],"delivery":{"method":"urn:ietf:rfc:8936"}}`)
	if code != http.StatusCreated {
		t.Fatalf("create the poll stream: %d %v", code, m)
	}
	pollURL := m["delivery"].(map[string]any)["endpoint_url"].(string)
	testkit.Eventually(t, func() bool { c, _ := store.Cursor(t.Context()); return c != "" }, "the transmitter follows the feed")

	counter := &pathCounter{calls: map[string]int{}}
	v, err := verify.New(verify.Config{Issuer: o.PublicURL, Audience: "https://tools.example.com", ClientID: "tools", ClientSecret: "tool-secret",
		HTTPClient: &http.Client{Transport: counter, Timeout: 5 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	declare := func(sub string) (taskID, token string) {
		t.Helper()
		code, m := call("POST", "/v1/tasks", "Bearer "+idp.Token(t, map[string]any{"sub": sub}), "application/json",
			`{"template":"triage","intent":"triage ticket 1","tools":["tickets.read"],"ttl_seconds":60}`)
		if code != http.StatusCreated {
			t.Fatalf("declare: %d %v", code, m)
		}
		return m["task"].(map[string]any)["id"].(string), m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
	}
	check := func(tok string) error {
		req, _ := http.NewRequest(http.MethodGet, "http://tools.example.com/tickets/1", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		_, err := v.Check(t.Context(), req, "tickets.read")
		return err
	}
	task, tok := declare("agent-a")
	_, other := declare("agent-b")

	// Not following yet: a check asks Valet.
	if err := check(tok); err != nil {
		t.Fatalf("check before the stream: %v", err)
	}
	if counter.get("/v1/introspect") != 1 {
		t.Fatalf("calls before the stream is live: %v, want one introspection", counter)
	}
	if err := v.FollowSSF(ctx, verify.SSFStream{PollURL: "ftp://x", Audience: "a", Authorization: func(context.Context) (string, error) { return "", nil }}); err == nil {
		t.Fatal("a bad poll URL is accepted")
	}
	go func() {
		_ = v.FollowSSF(ctx, verify.SSFStream{PollURL: pollURL, Audience: "urn:tool-server",
			Authorization: func(context.Context) (string, error) { return adminAuth, nil }})
	}()
	testkit.Eventually(t, v.Live, "the SSF stream goes live")

	warm := counter.checking()
	const checks = 200
	for i := range checks {
		if err := check(tok); err != nil {
			t.Fatalf("warm check %d: %v", i, err)
		}
	}
	if got := counter.checking() - warm; got != 0 {
		t.Fatalf("%d warm checks made %d calls to Valet, want 0 (%v)", checks, got, counter)
	}

	revoked := time.Now()
	if code, m := call("POST", "/v1/tasks/"+task+"/complete", "Bearer "+tok, "", ""); code != http.StatusOK && code != http.StatusNoContent {
		t.Fatalf("complete: %d %v", code, m)
	}
	before := counter.checking()
	for check(tok) == nil {
		if time.Since(revoked) > 10*time.Second {
			t.Fatal("the ended task's token is still accepted 10 s after its end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(revoked)
	if got := counter.checking() - before; got != 0 {
		t.Fatalf("checks called Valet %d times after the end, want 0 (%v)", got, counter)
	}

	// Freezing agent-b goes out as RISC account-disabled: its live token is refused.
	frozen := time.Now()
	if code, m := call("POST", "/v1/admin/controls", adminAuth, "application/json",
		`{"kind":"freeze_agent","target":"agent-b","issuer":"test","reason":"test"}`); code/100 != 2 {
		t.Fatalf("freeze: %d %v", code, m)
	}
	for check(other) == nil {
		if time.Since(frozen) > 10*time.Second {
			t.Fatal("the frozen agent's token is still accepted 10 s after the freeze")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("ended task refused %s after its end, frozen agent %s after the freeze; calls to Valet: %v",
		took.Round(time.Millisecond), time.Since(frozen).Round(time.Millisecond), counter)
}

// TestSSFReceiverQuarantineNeedsKnownTemplates: a receiver whose
// quarantine_template would suspend a template the set does not define
// refuses the start, naming it.
func TestSSFReceiverQuarantineNeedsKnownTemplates(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	o, _, _, _ := testOptions(t, clock)
	withRedis(t, &o, time.Hour)
	tt := ssf.TrustedTransmitter{Name: "idp", Issuer: "https://idp.example", JWKSURL: "https://idp.example/jwks", Audience: []string{"valet"},
		SubjectIssuer: "test", Actions: map[string]ssf.Action{ssf.EventRiskLevelChange: ssf.ActionQuarantineTemplate}, Templates: []string{"triage", "payments"}}
	o.SSF = &SSFOptions{Receiver: &ssf.ReceiverConfig{Transmitters: []ssf.TrustedTransmitter{tt}}}
	if _, err := New(t.Context(), o); err == nil || !strings.Contains(err.Error(), `template "payments"`) {
		t.Fatalf("New = %v, want the unknown template named", err)
	}
	tt.Templates = []string{"triage"}
	o.SSF = &SSFOptions{Receiver: &ssf.ReceiverConfig{Transmitters: []ssf.TrustedTransmitter{tt}}}
	if _, err := New(t.Context(), o); err != nil {
		t.Fatalf("New with a known template: %v", err)
	}
}
