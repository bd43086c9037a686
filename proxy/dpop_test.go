package proxy

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/dpop"
)

const dpopTemplates = `
templates:
  - name: t
    principals: [{issuer: test}]
    ttl: {default: 5m, max: 10m}
    tools: [tickets.read]
    audiences: [valet-proxy]
    upstreams:
      - name: tickets
        url: http://UPSTREAM/api
        allow_private: true
        credential: {from: task_token, as: header}
        routes: [{methods: [GET], path: "/tickets/*", tool: tickets.read}]
`

func newDPoPSigner(t *testing.T) *dpop.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := dpop.NewSigner(priv, jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDPoPBoundHandle: a declaration through the proxy with a DPoP proof
// binds the handle to the proof's key; a request with the handle then
// passes only with a fresh proof by that key for that request (reverse
// and forward mode, and completion), and each refusal (no proof, another
// key, a replayed proof, another htu or method, a stale iat, no ath) is a
// 401 naming the dpop rule, audited once. The agent's proof never goes
// upstream, and a bound handle opens no database session.
func TestDPoPBoundHandle(t *testing.T) {
	var mu sync.Mutex
	var upstreamSaw []http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		upstreamSaw = append(upstreamSaw, r.Header.Clone())
		mu.Unlock()
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(up.Close)
	st := newStack(t, strings.Replace(dpopTemplates, "UPSTREAM", strings.TrimPrefix(up.URL, "http://"), 1), Config{})
	key, other := newDPoPSigner(t), newDPoPSigner(t)
	proof := func(s *dpop.Signer, method, u string, at time.Time, handle string) string {
		t.Helper()
		p, err := s.Proof(method, u, at, handle)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	// A bad proof at declaration declares nothing.
	status, _, body := st.do(t, http.MethodPost, "/v1/tasks", strings.NewReader(`{"template":"t","intent":"x","tools":["tickets.read"]}`),
		http.Header{"Content-Type": {"application/json"}, "DPoP": {proof(key, http.MethodPost, st.url+"/v1/other", time.Now(), "")}})
	if status != http.StatusUnauthorized || !strings.Contains(string(body), `"rule":"dpop"`) || !strings.Contains(string(body), "htu") {
		t.Fatalf("declaration with a proof for another URL: %d %s", status, body)
	}
	id, handle, answer := st.declare(t, "t", http.Header{"DPoP": {proof(key, http.MethodPost, st.url+"/v1/tasks", time.Now(), "")}}, "tickets.read")
	var a struct {
		JKT string `json:"dpop_jkt"`
	}
	if err := json.Unmarshal(answer, &a); err != nil || a.JKT != key.JKT() {
		t.Fatalf("the answer's dpop_jkt %q, want the key's %q", a.JKT, key.JKT())
	}

	const path = "/u/tickets/tickets/7"
	call := func(method, path string, hdr http.Header) (int, []byte) {
		t.Helper()
		if hdr.Get("Authorization") == "" {
			hdr.Set("Authorization", "DPoP "+handle)
		}
		status, _, body := st.do(t, method, path, nil, hdr)
		return status, body
	}
	good := proof(key, http.MethodGet, st.url+path, time.Now(), handle)
	if status, body := call(http.MethodGet, path, http.Header{"DPoP": {good}}); status != http.StatusOK {
		t.Fatalf("a good proof: %d %s", status, body)
	}
	mu.Lock()
	if h := upstreamSaw[len(upstreamSaw)-1]; h.Get("DPoP") != "" || !strings.HasPrefix(h.Get("Authorization"), "Bearer ey") {
		t.Fatalf("the upstream got DPoP %q and Authorization %q", h.Get("DPoP"), h.Get("Authorization"))
	}
	mu.Unlock()
	// The Bearer scheme works too: the binding is checked, not the scheme.
	if status, body := call(http.MethodGet, path, http.Header{"Authorization": {"Bearer " + handle},
		"DPoP": {proof(key, http.MethodGet, st.url+path, time.Now(), handle)}}); status != http.StatusOK {
		t.Fatalf("a good proof, Bearer scheme: %d %s", status, body)
	}

	refusals := []struct {
		name string
		hdr  http.Header
		want string
	}{
		{"no proof", http.Header{}, "send a DPoP proof"},
		{"another key", http.Header{"DPoP": {proof(other, http.MethodGet, st.url+path, time.Now(), handle)}}, "another key"},
		{"replayed", http.Header{"DPoP": {good}}, "replay"},
		{"another htu", http.Header{"DPoP": {proof(key, http.MethodGet, st.url+"/u/tickets/tickets/8", time.Now(), handle)}}, "htu"},
		{"another method", http.Header{"DPoP": {proof(key, http.MethodPost, st.url+path, time.Now(), handle)}}, "htm"},
		{"stale iat", http.Header{"DPoP": {proof(key, http.MethodGet, st.url+path, time.Now().Add(-2*time.Minute), handle)}}, "iat"},
		{"no ath", http.Header{"DPoP": {proof(key, http.MethodGet, st.url+path, time.Now(), "")}}, "ath"},
		{"two proofs", http.Header{"DPoP": {proof(key, http.MethodGet, st.url+path, time.Now(), handle), proof(key, http.MethodGet, st.url+path, time.Now(), handle)}}, "more than one"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(http.MethodGet, path, tc.hdr)
			var b refusalBody
			if status != http.StatusUnauthorized || json.Unmarshal(body, &b) != nil || b.Rule != "dpop" || !strings.Contains(b.Message, tc.want) {
				t.Fatalf("%d %s; want 401, rule dpop, saying %q", status, body, tc.want)
			}
		})
	}
	// Each refusal is audited once (and the bad declaration).
	if n := strings.Count(st.trail.String(), `"rule":"dpop"`); n != len(refusals)+1 {
		t.Errorf("%d dpop refusals audited, want %d:\n%s", n, len(refusals)+1, st.trail.String())
	}

	// Forward mode: the htu is the absolute URL the agent asked for.
	pu, _ := url.Parse(st.url)
	fwd := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}}
	forward := func(p string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, up.URL+"/api/tickets/9", nil)
		req.Header.Set("Proxy-Authorization", "DPoP "+handle)
		req.Header.Set("DPoP", p)
		resp, err := fwd.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := forward(proof(key, http.MethodGet, up.URL+"/api/tickets/9", time.Now(), handle)); s != http.StatusOK {
		t.Fatalf("forward with a good proof: %d", s)
	}
	if s := forward(proof(key, http.MethodGet, st.url+"/api/tickets/9", time.Now(), handle)); s != http.StatusUnauthorized {
		t.Fatalf("forward with a proof for the proxy's URL: %d", s)
	}

	if _, err := st.p.Database("127.0.0.1:1", nil).Resolve(context.Background(), "agent", "app", handle); err == nil || !strings.Contains(err.Error(), "bound to a DPoP key") {
		t.Fatalf("a database login with a bound handle: %v", err)
	}

	// Completing takes a proof too.
	cpath := "/v1/tasks/" + id + "/complete"
	if status, body := call(http.MethodPost, cpath, http.Header{}); status != http.StatusUnauthorized {
		t.Fatalf("complete without a proof: %d %s", status, body)
	}
	if status, body := call(http.MethodPost, cpath, http.Header{"DPoP": {proof(key, http.MethodPost, st.url+cpath, time.Now(), handle)}}); status != http.StatusOK {
		t.Fatalf("complete with a proof: %d %s", status, body)
	}
}

// TestReplayCache: a jti is refused while a proof with it could be fresh,
// forgotten after, and a full cache of live entries refuses (fail closed).
func TestReplayCache(t *testing.T) {
	now := time.Now()
	c := newReplayCache(2)
	if err := c.use("k", "a", now); err != nil {
		t.Fatal(err)
	}
	if err := c.use("k", "a", now.Add(dpop.Window)); err == nil {
		t.Fatal("a replay within the window was accepted")
	}
	if err := c.use("other-key", "a", now); err != nil {
		t.Fatalf("the same jti of another key: %v", err)
	}
	if err := c.use("k", "b", now); err != errReplayFull {
		t.Fatalf("a full cache: %v, want errReplayFull", err)
	}
	later := now.Add(2*dpop.Window + 2*time.Second)
	if err := c.use("k", "b", later); err != nil {
		t.Fatalf("after the entries expired: %v", err)
	}
	if err := c.use("k", "a", later); err != nil {
		t.Fatalf("an expired jti: %v", err)
	}
}
