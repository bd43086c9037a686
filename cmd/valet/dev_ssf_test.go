package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/verify"
)

// TestDevServesSSF: `valet dev --redis` runs the Shared Signals transmitter
// with no configuration: its banner names the discovery document, a
// development admin creates a poll stream, and a tool server's verifier
// following that stream refuses a completed task's token from the SETs
// alone (no introspection). Without --redis the banner says SSF is off and
// no SSF route answers.
func TestDevServesSSF(t *testing.T) {
	out, errOut := startRun(t, nil, "dev", "--addr", testkit.FreeAddr(t), "--audit", filepath.Join(t.TempDir(), "audit.jsonl"))
	plain := waitFor(t, out, errOut, regexp.MustCompile(`Valet development server on (http://\S+)`))
	waitFor(t, out, errOut, regexp.MustCompile(`(Shared Signals \(SSF\) transmitter: off \(run with --redis)`))
	if code, _ := call(t, "GET", plain+"/.well-known/ssf-configuration", "", ""); code != http.StatusNotFound {
		t.Fatalf("ssf-configuration without --redis: %d, want 404", code)
	}

	rd := redistest.Start(t)
	out, errOut = startRun(t, nil, "dev", "--addr", testkit.FreeAddr(t), "--redis", rd.URL(), "--audit", filepath.Join(t.TempDir(), "audit.jsonl"))
	base := waitFor(t, out, errOut, regexp.MustCompile(`Valet development server on (http://\S+)`))
	if got := waitFor(t, out, errOut, regexp.MustCompile(`Shared Signals \(SSF\) transmitter: (\S+)`)); got != base+"/.well-known/ssf-configuration" {
		t.Fatalf("banner names %q as the SSF configuration", got)
	}
	code, meta := call(t, "GET", base+"/.well-known/ssf-configuration", "", "")
	if code != http.StatusOK || meta["issuer"] != base || meta["spec_version"] != "1_0" {
		t.Fatalf("ssf-configuration: %d %v", code, meta)
	}
	admin := "Bearer " + devToken(t, base, "admin=alice")
	code, stream := call(t, "POST", base+"/ssf/streams", admin, `{"aud":"urn:tool-server","events_requested":[
		"https://schemas.openid.net/secevent/caep/event-type/session-revoked",
		"https://schemas.openid.net/secevent/caep/event-type/credential-change"],"delivery":{"method":"urn:ietf:rfc:8936"}}`)
	if code != http.StatusCreated {
		t.Fatalf("create a poll stream: %d %v", code, stream)
	}
	pollURL, _ := stream["delivery"].(map[string]any)["endpoint_url"].(string)
	if !strings.HasPrefix(pollURL, base+"/ssf/poll/") {
		t.Fatalf("poll stream endpoint_url %q", pollURL)
	}

	introspections := 0
	counting := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.URL.Path == "/v1/introspect" {
			introspections++ // only the test's goroutine checks
		}
		return http.DefaultTransport.RoundTrip(r)
	})
	v, err := verify.New(verify.Config{Issuer: base, Audience: "https://tools.example.com", ClientID: "tool-server",
		ClientSecret: devClientSecret, HTTPClient: &http.Client{Transport: counting, Timeout: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_ = v.FollowSSF(ctx, verify.SSFStream{PollURL: pollURL, Audience: "urn:tool-server",
			Authorization: func(context.Context) (string, error) { return admin, nil }})
	}()
	testkit.Eventually(t, v.Live, "the verifier follows the dev SSF stream")

	agent := devToken(t, base, "agent=agent-7")
	code, task := call(t, "POST", base+"/v1/tasks", "Bearer "+agent,
		`{"template":"support-triage","intent":"triage ticket 4521","tools":["tickets.read"],"ttl_seconds":120}`)
	if code != http.StatusCreated {
		t.Fatalf("declare: %d %v", code, task)
	}
	taskID := task["task"].(map[string]any)["id"].(string)
	token := task["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
	check := func() error {
		req, _ := http.NewRequest(http.MethodGet, "https://tools.example.com/tickets/1", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		_, err := v.Check(ctx, req, "tickets.read")
		return err
	}
	if err := check(); err != nil {
		t.Fatalf("a live task's token: %v", err)
	}
	if code, m := call(t, "POST", base+"/v1/tasks/"+taskID+"/complete", "Bearer "+token, ""); code/100 != 2 {
		t.Fatalf("complete: %d %v", code, m)
	}
	ended := time.Now()
	for check() == nil {
		if time.Since(ended) > 10*time.Second {
			t.Fatal("the completed task's token is still accepted 10 s later")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if introspections != 0 {
		t.Fatalf("the verifier introspected %d times while following the stream, want 0", introspections)
	}
	t.Logf("completed task refused %s after its end, from the dev SSF stream", time.Since(ended).Round(time.Millisecond))
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// devToken mints a development identity token (query: agent=NAME or admin=NAME).
func devToken(t *testing.T, base, query string) string {
	t.Helper()
	code, m := call(t, "POST", base+"/dev/token?"+query, "", "")
	tok, _ := m["identity_token"].(string)
	if code != http.StatusOK || tok == "" {
		t.Fatalf("dev token %s: %d %v", query, code, m)
	}
	return tok
}

// call makes one request and decodes its JSON object answer (if any).
func call(t *testing.T, method, url, auth, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	if auth != "" {
		req.Header.Set("Authorization", auth)
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
