package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/examples/toolserver"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/verify"
)

// countingTransport counts the tool server's calls to Valet, by path.
type countingTransport struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.calls[r.URL.Path]++
	c.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

func (c *countingTransport) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.calls {
		n += v
	}
	return n
}

// checks counts the calls made to check tokens (JWKS, feed,
// introspection, consumption): everything but the tool-call reports
// (POST /v1/tasks/{id}/events), which are sent after the answer, off the
// request path.
func (c *countingTransport) checks() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for p, v := range c.calls {
		if !strings.HasSuffix(p, "/events") {
			n += v
		}
	}
	return n
}

// reports counts the tool-call reports.
func (c *countingTransport) reports() int { return c.total() - c.checks() }

// snapshot copies the counts, for messages.
func (c *countingTransport) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[string]int, len(c.calls))
	for k, v := range c.calls {
		m[k] = v
	}
	return m
}

func (c *countingTransport) get(path string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[path]
}

// newToolServer runs the example tool server with a verifier of its own.
// feed says whether the verifier follows the revocation feed.
func newToolServer(t *testing.T, e *env, feed bool) (*httptest.Server, *verify.Verifier, *countingTransport) {
	ct := &countingTransport{calls: map[string]int{}}
	ts := httptest.NewUnstartedServer(nil) // its URL is the verifier's PublicURL
	v, err := verify.New(verify.Config{Issuer: e.srv.URL, Audience: "https://tools.example.com", ClientID: clientID,
		ClientSecret: clientSecret, HTTPClient: &http.Client{Transport: ct, Timeout: 5 * time.Second}, Now: e.clock.Now,
		PublicURL: "http://" + ts.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if feed {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		go v.Run(ctx)
		testkit.Eventually(t, v.Live, "the revocation feed to go live")
	}
	ts.Config.Handler = toolserver.New(v)
	ts.Start()
	t.Cleanup(ts.Close)
	return ts, v, ct
}

// call makes one tool call with a task token and returns the status.
func call(t *testing.T, ts *httptest.Server, token, method, path string) int {
	t.Helper()
	req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader("looked at it"))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestVerifierRevocationByFeed: the example tool server accepts a live
// token with no call to Valet per request, and refuses it within 1 s of
// its task's revocation, still with no call per request.
func TestVerifierRevocationByFeed(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates, incident: true})
	ts, _, ct := newToolServer(t, e, true)
	_, tok := e.declareIn("crew", "agent-a", "tickets.read")

	if s := call(t, ts, tok, http.MethodGet, "/tickets/1"); s != http.StatusOK {
		t.Fatalf("first call: %d", s)
	}
	warm := ct.checks()
	const calls = 200
	for range calls {
		if s := call(t, ts, tok, http.MethodGet, "/tickets/1"); s != http.StatusOK {
			t.Fatalf("warm call: %d", s)
		}
	}
	if got := ct.checks() - warm; got != 0 {
		t.Fatalf("%d warm tool calls made %d checking calls to Valet, want 0 (%v)", calls, got, ct.snapshot())
	}
	if s := call(t, ts, tok, http.MethodPost, "/tickets/1/comments"); s != http.StatusForbidden {
		t.Fatalf("a tool the task lacks: %d", s)
	}
	t.Logf("calls to Valet after warm-up: %v", ct.snapshot())

	revoked := time.Now()
	if r := e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+tok), true); r.Status != 200 {
		t.Fatalf("revoke: %d", r.Status)
	}
	before := ct.checks()
	n := 0
	for call(t, ts, tok, http.MethodGet, "/tickets/1") == http.StatusOK {
		n++
		if time.Since(revoked) > time.Second {
			t.Fatalf("the revoked token is still accepted %s after the revocation", time.Since(revoked))
		}
		time.Sleep(5 * time.Millisecond) // bounded polling of real background work
	}
	took := time.Since(revoked)
	if got := ct.checks() - before; got != 0 {
		t.Fatalf("the tool server called Valet %d times while checking, want 0", got)
	}
	t.Logf("revoked token refused %s after the revocation (%d calls accepted in between); JWKS fetches %d, snapshots %d, streams %d, introspections %d; tool-call reports sent after the answers (off the request path): %d",
		took.Round(time.Millisecond), n, ct.get("/.well-known/jwks.json"), ct.get("/v1/revocations"), ct.get("/v1/revocations/stream"), ct.get("/v1/introspect"), ct.reports())
}

// TestTreeRevocation: trees of depth 1, 2 and 10, and a chain that cycles
// through the same two agents; revoking the root makes every descendant
// inactive at introspection, at a verifier on introspection and at a
// verifier on the feed.
func TestTreeRevocation(t *testing.T) {
	cases := []struct {
		name     string
		template string
		depth    int
		fanout   int
		agents   []string // cycled through, level by level
	}{
		{"depth 1", "pair", 1, 2, []string{"agent-b"}},
		{"depth 2", "pair", 2, 1, []string{"agent-b", "agent-c"}},
		{"depth 10", "crew", 10, 2, []string{"agent-b"}}, // binary for 4 levels, then chains: 126 descendants
		{"cycle of the same agents", "crew", 10, 1, []string{"agent-a", "agent-b"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, envOptions{templates: agentTemplates, incident: true})
			viaFeed, _, feedCalls := newToolServer(t, e, true)
			viaIntro, vi, _ := newToolServer(t, e, false)
			if vi.Live() {
				t.Fatal("verifier without Run is live")
			}
			_, root := e.declareIn(c.template, "agent-a", "tickets.read")
			var tokens []string
			level := []string{root}
			start := time.Now()
			for d := 1; d <= c.depth; d++ {
				var next []string
				for _, p := range level {
					fanout := c.fanout
					if d > 4 {
						fanout = 1
					}
					for range fanout {
						_, tok := e.child(p, c.agents[(d-1)%len(c.agents)], "tickets.read")
						next = append(next, tok)
					}
				}
				tokens = append(tokens, next...)
				level = next
			}
			t.Logf("%d descendants built in %s", len(tokens), time.Since(start).Round(time.Millisecond))
			for _, tok := range []string{tokens[0], tokens[len(tokens)-1]} {
				if s := call(t, viaIntro, tok, http.MethodGet, "/tickets/1"); s != 200 {
					t.Fatalf("live descendant refused: %d", s)
				}
			}
			start = time.Now()
			if r := e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+root), true); r.Status != 200 {
				t.Fatalf("revoke root: %d %s", r.Status, r.Body)
			}
			t.Logf("root revoked, cascade over %d descendants took %s", len(tokens), time.Since(start).Round(time.Millisecond))
			deadline := time.Now().Add(2 * time.Second)
			for i, tok := range tokens {
				if in := e.introspect(tok); in["active"] != false {
					t.Fatalf("descendant %d still active at introspection", i)
				}
				if s := call(t, viaIntro, tok, http.MethodGet, "/tickets/1"); s != 401 {
					t.Fatalf("descendant %d: verifier on introspection answered %d", i, s)
				}
				for call(t, viaFeed, tok, http.MethodGet, "/tickets/1") != 401 {
					if time.Now().After(deadline) {
						t.Fatalf("descendant %d: verifier on the feed still accepts it", i)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
			if n := feedCalls.get("/v1/introspect"); n != 0 {
				t.Fatalf("the verifier on the feed introspected %d times, want 0", n)
			}
		})
	}
}
