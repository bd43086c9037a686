package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/policy"
)

const oauthTemplates = `
templates:
  - name: crm
    principals: [{issuer: test}]
    ttl: {default: 5m, max: 10m}
    tools: [crm.read, crm.write]
    audiences: [valet-proxy]
    upstreams:
      - name: crm
        url: http://UPSTREAM/api
        allow_private: true
        credential: {from: "oauth:corp", as: header}
        routes:
          - {methods: [GET], path: "/accounts/*", tool: crm.read}
      - name: crmw
        url: http://localhost:UPPORT/api
        allow_private: true
        credential: {from: "oauth:corp", as: header, scopes: [crm.write, crm.read]}
        routes:
          - {methods: [POST], path: "/accounts/*", tool: crm.write}
      - name: down
        url: http://DOWNHOST/down
        allow_private: true
        credential: {from: "oauth:broken", as: header}
        routes:
          - {methods: [GET], path: "/**", tool: crm.read}
`

const oauthSecret = "oauth-client-secret-canary-91c3"

// tokenEndpoint is an OAuth provider's token endpoint on loopback: it
// checks the proxy's client credentials and issues a fresh canary token
// per request, living expiresIn seconds.
type tokenEndpoint struct {
	*httptest.Server
	expiresIn int
	issued    atomic.Int64
	mu        sync.Mutex
	scopes    []string
	tokens    []string
}

func newTokenEndpoint(t *testing.T, expiresIn int) *tokenEndpoint {
	te := &tokenEndpoint{expiresIn: expiresIn}
	te.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, ok := r.BasicAuth()
		if r.Method != http.MethodPost || r.URL.Path != "/token" || !ok || id != "proxy-at-corp" || secret != oauthSecret ||
			r.PostFormValue("grant_type") != "client_credentials" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = fmt.Fprint(w, `{"error":"invalid_client"}`)
			return
		}
		n := te.issued.Add(1)
		tok := fmt.Sprintf("oauth-access-canary-%d-7d1e", n)
		te.mu.Lock()
		te.scopes, te.tokens = append(te.scopes, r.PostFormValue("scope")), append(te.tokens, tok)
		te.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": te.expiresIn})
	}))
	t.Cleanup(te.Close)
	return te
}

// TestOAuthProviderCredential: an upstream whose credential is
// oauth:<provider> gets the provider's client-credentials token, cached
// per provider and scope set until shortly before it expires, fetched
// anew after; the agent's own Authorization is dropped; a provider whose
// token endpoint is down is a 503 naming it; and no token or client
// secret reaches the agent, the proxy's log or audit, or Valet's audit.
func TestOAuthProviderCredential(t *testing.T) {
	te := newTokenEndpoint(t, 120)
	var mu sync.Mutex
	var seen []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		mu.Unlock()
		_, _ = fmt.Fprintf(w, `{"ok":true,"path":%q}`, r.URL.Path)
	}))
	t.Cleanup(up.Close)
	last := func() string {
		mu.Lock()
		defer mu.Unlock()
		return seen[len(seen)-1]
	}
	upHost := strings.TrimPrefix(up.URL, "http://")
	port := upHost[strings.LastIndex(upHost, ":")+1:]
	other := httptest.NewServer(http.NotFoundHandler()) // never reached: no token for it
	t.Cleanup(other.Close)
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL + "/token"
	down.Close() // nothing listens there any more

	clock := testkit.NewClock(time.Now())
	st := newStack(t, strings.NewReplacer("UPSTREAM", upHost, "UPPORT", port, "DOWNHOST", strings.TrimPrefix(other.URL, "http://")).Replace(oauthTemplates), Config{Now: clock.Now,
		OAuthProviders: []OAuthProvider{
			{Name: "corp", TokenURL: te.URL + "/token", ClientID: "proxy-at-corp", ClientSecret: oauthSecret, Scopes: []string{"crm.read"}},
			{Name: "broken", TokenURL: downURL, ClientID: "proxy-at-broken", ClientSecret: oauthSecret},
		}})
	id, handle, answer := st.declare(t, "crm", nil, "crm.read", "crm.write")
	var agentSaw strings.Builder
	agentSaw.Write(answer)
	call := func(method, path string) (int, []byte) {
		t.Helper()
		status, hdr, body := st.do(t, method, path, strings.NewReader("{}"), http.Header{"Authorization": {"Bearer " + handle}})
		for k, v := range hdr {
			agentSaw.WriteString(k + ": " + strings.Join(v, ",") + "\n")
		}
		agentSaw.Write(body)
		return status, body
	}

	if status, body := call(http.MethodGet, "/u/crm/accounts/7"); status != http.StatusOK {
		t.Fatalf("GET through an oauth upstream: %d %s", status, body)
	}
	if last() != "Bearer oauth-access-canary-1-7d1e" {
		t.Fatalf("the upstream got Authorization %q, want the provider's token", last())
	}
	// Cached: the same scope set asks the provider nothing more.
	call(http.MethodGet, "/u/crm/accounts/8")
	if te.issued.Load() != 1 || last() != "Bearer oauth-access-canary-1-7d1e" {
		t.Fatalf("issued %d tokens, upstream got %q; want the cached token", te.issued.Load(), last())
	}
	// Another scope set is another token.
	if status, body := call(http.MethodPost, "/u/crmw/accounts/8"); status != http.StatusOK || last() != "Bearer oauth-access-canary-2-7d1e" {
		t.Fatalf("POST with other scopes: %d %s, upstream got %q", status, body, last())
	}
	te.mu.Lock()
	if strings.Join(te.scopes, "|") != "crm.read|crm.read crm.write" {
		t.Errorf("scopes asked: %q, want the provider's default, then the upstream's (sorted)", te.scopes)
	}
	te.mu.Unlock()
	// Never used past its expiry (less a margin): 120 s token, 95 s later
	// the proxy asks again.
	clock.Advance(95 * time.Second)
	call(http.MethodGet, "/u/crm/accounts/9")
	if te.issued.Load() != 3 || last() != "Bearer oauth-access-canary-3-7d1e" {
		t.Fatalf("after the token's expiry: issued %d, upstream got %q", te.issued.Load(), last())
	}
	// A provider that cannot be reached: 503 naming it.
	status, body := call(http.MethodGet, "/u/down/x")
	if status != http.StatusServiceUnavailable || !strings.Contains(string(body), `OAuth provider \"broken\"`) || !strings.Contains(string(body), `"rule":"oauth"`) {
		t.Fatalf("provider down: %d %s", status, body)
	}

	// After the task ends, no provider token is fetched or attached for it.
	if status, _, body := st.do(t, http.MethodPost, "/v1/tasks/"+id+"/complete", nil, http.Header{"Authorization": {"Bearer " + handle}}); status != http.StatusOK {
		t.Fatalf("complete: %d %s", status, body)
	}
	clock.Advance(95 * time.Second)
	before := te.issued.Load()
	mu.Lock()
	calls := len(seen)
	mu.Unlock()
	if status, body := call(http.MethodGet, "/u/crm/accounts/9"); status != http.StatusForbidden || !strings.Contains(string(body), "task_ended") {
		t.Fatalf("after completion: %d %s", status, body)
	}
	mu.Lock()
	if te.issued.Load() != before || len(seen) != calls {
		t.Errorf("after completion the provider was asked (%d→%d) or the upstream called (%d→%d)", before, te.issued.Load(), calls, len(seen))
	}
	mu.Unlock()

	te.mu.Lock()
	tokens := te.tokens
	te.mu.Unlock()
	for what, text := range map[string]string{"the agent's answers": agentSaw.String(), "the proxy's log": st.logs.String(),
		"the proxy's audit": st.trail.String(), "Valet's audit": st.valetAudit.String()} {
		for _, tok := range append(tokens, oauthSecret, "oauth-access-canary") {
			if strings.Contains(text, tok) {
				t.Errorf("%s hold %q", what, tok)
			}
		}
	}
}

// TestOAuthProvidersChecked: a template credential naming a provider the
// proxy does not have, and a provider without its client, stop New with
// every problem named.
func TestOAuthProvidersChecked(t *testing.T) {
	set := mustTemplates(t, strings.NewReplacer("UPSTREAM", "crm.example.com", "UPPORT", "8080", "DOWNHOST", "down.example.com").Replace(oauthTemplates))
	_, err := New(Config{Valet: "http://127.0.0.1:1", Identity: func(context.Context) (string, error) { return "", nil }, Audience: "valet-proxy",
		ClientID: "c", ClientSecret: "s", Templates: set, Auditor: audit.NewLog(io.Discard),
		OAuthProviders: []OAuthProvider{{Name: "corp", TokenURL: "https://idp.example.com/token", ClientID: "x"}}})
	for _, want := range []string{`oauth provider "corp": token URL, client id and client secret are required`,
		`template "crm", upstream "down": credential "oauth:broken" names no configured OAuth provider`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New: %v; want it to say %s", err, want)
		}
	}
}

func mustTemplates(t *testing.T, text string) *policy.Set {
	t.Helper()
	set, err := policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(text)}}, []string{"test"})
	if err != nil {
		t.Fatal(err)
	}
	return set
}
