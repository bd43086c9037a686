package e2e

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/devidp"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

// codeTemplates: the interactive host notes-host (and any CIMD client)
// may act for people of example.com at the tool server.
const codeTemplates = `
templates:
  - name: notes
    principals:
      - issuer: clients
        condition: 'claims.sub == "notes-host" || claims.sub.startsWith("https://127.0.0.1:")'
    users:
      - issuer: test
        condition: 'has(claims.email) && claims.email.endsWith("@example.com")'
    ttl: {default: 5m, max: 10m, max_lifetime: 30m}
    tools: [notes.read, notes.write]
    audiences: [TOOL/mcp]
`

const (
	hostID       = "notes-host"
	hostRedirect = "http://localhost/callback"
)

// testUpstream is the upstream OIDC provider of the interactive flow: a
// scripted sign-in that signs in person at once (no form), with PKCE and
// nonce checked at its token step, and ID tokens from the env's test
// issuer.
type testUpstream struct {
	t        *testing.T
	idp      *oidctest.Issuer
	now      func() time.Time
	srv      *httptest.Server
	callback string

	mu       sync.Mutex
	person   string
	codes    map[string]upstreamCode
	signIns  int
	refusing bool
}

type upstreamCode struct{ person, nonce, challenge string }

func newTestUpstream(t *testing.T, idp *oidctest.Issuer) *testUpstream {
	u := &testUpstream{t: t, idp: idp, codes: map[string]upstreamCode{}, person: "alice"}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		u.mu.Lock()
		u.signIns++
		code := broker.NewID("upc")
		u.codes[code] = upstreamCode{person: u.person, nonce: q.Get("nonce"), challenge: q.Get("code_challenge")}
		refusing := u.refusing
		u.mu.Unlock()
		back := url.Values{"state": {q.Get("state")}, "code": {code}}
		if refusing {
			back = url.Values{"state": {q.Get("state")}, "error": {"access_denied"}}
		}
		http.Redirect(w, r, u.callback+"?"+back.Encode(), http.StatusFound)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *testUpstream) Start() (oauth.UpstreamState, string) {
	st := oauth.UpstreamState{State: broker.NewID("ust"), Nonce: broker.NewID("n"), Verifier: newVerifier()}
	return st, u.srv.URL + "/authorize?" + url.Values{"state": {st.State}, "nonce": {st.Nonce}, "code_challenge": {s256(st.Verifier)},
		"code_challenge_method": {"S256"}}.Encode()
}

func (u *testUpstream) Finish(_ context.Context, st oauth.UpstreamState, q url.Values) (broker.Principal, string, error) {
	if q.Get("error") != "" || q.Get("state") != st.State {
		return broker.Principal{}, "", fmt.Errorf("upstream: refused, or state mismatch")
	}
	u.mu.Lock()
	c, ok := u.codes[q.Get("code")]
	delete(u.codes, q.Get("code"))
	u.mu.Unlock()
	if !ok || c.challenge != s256(st.Verifier) || c.nonce != st.Nonce {
		return broker.Principal{}, "", fmt.Errorf("upstream: bad code, verifier or nonce")
	}
	raw := u.idp.Token(u.t, map[string]any{"sub": c.person, "email": c.person + "@example.com", "nonce": st.Nonce}, oidctest.WithNow(u.now()))
	// As identity.Login does: the person with the verified claims.
	return broker.Principal{Issuer: "test", Subject: c.person, Claims: map[string]any{"sub": c.person, "email": c.person + "@example.com"}}, raw, nil
}

func s256(v string) string {
	sum := sha256.Sum256([]byte(v))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// codeEnv is a broker with the authorization code grant on, its tool
// server, upstream provider and a CIMD host serving client documents.
type codeEnv struct {
	*env
	ts    *oauthToolServer
	up    *testUpstream
	cimd  *httptest.Server
	docs  sync.Map // path → func(w)
	store *downableStore
}

// downableStore is the oauth store, which a test can take down.
type downableStore struct {
	oauth.Store
	down atomic.Bool
	puts atomic.Int64
}

var errStoreDown = errors.New("store down")

func (s *downableStore) Put(ctx context.Context, k string, v []byte, until time.Time) (bool, error) {
	if s.down.Load() {
		return false, errStoreDown
	}
	s.puts.Add(1)
	return s.Store.Put(ctx, k, v, until)
}

func (s *downableStore) Get(ctx context.Context, k string) ([]byte, error) {
	if s.down.Load() {
		return nil, errStoreDown
	}
	return s.Store.Get(ctx, k)
}

func (s *downableStore) Take(ctx context.Context, k string) ([]byte, error) {
	if s.down.Load() {
		return nil, errStoreDown
	}
	return s.Store.Take(ctx, k)
}

func (s *downableStore) Swap(ctx context.Context, k string, v []byte) ([]byte, error) {
	if s.down.Load() {
		return nil, errStoreDown
	}
	return s.Store.Swap(ctx, k, v)
}

func newCodeEnv(t *testing.T) *codeEnv {
	ts, ln := newOAuthToolServer(t)
	idp := oidctest.New(t)
	c := &codeEnv{ts: ts, up: newTestUpstream(t, idp), store: &downableStore{Store: revocation.NewMemoryOAuthStore(nil)}}
	c.cimd = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f, ok := c.docs.Load(r.URL.Path); ok {
			f.(func(http.ResponseWriter))(w)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(c.cimd.Close)
	roots := x509.NewCertPool()
	roots.AddCert(c.cimd.Certificate())
	e := newEnv(t, envOptions{idp: idp, templates: strings.ReplaceAll(codeTemplates, "TOOL", ts.url),
		oauthInteractive: &oauth.InteractiveConfig{
			Upstream: c.up, Store: c.store,
			Clients: []oauth.PublicClient{{ID: hostID, Name: "Notes <b>Host</b>", RedirectURIs: []string{hostRedirect}, Templates: []string{"notes"}}},
			// The CIMD host is on loopback: allowed for this test only
			// (oauth's unit tests refuse it without AllowPrivate).
			CIMD: oauth.CIMDConfig{Enabled: true, AllowPrivate: true, RootCAs: roots, MaxBytes: 4096},
		}})
	c.env = e
	c.up.now, c.up.callback = e.clock.Now, e.srv.URL+oauth.CallbackPath
	ts.start(t, e, ln)
	return c
}

// doc serves a client metadata document at path.
func (c *codeEnv) doc(path string, f func(w http.ResponseWriter)) string {
	c.docs.Store(path, f)
	return c.cimd.URL + path
}

func jsonDoc(v any) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
}

// browser is a person's browser: cookies, and redirects followed until
// one leaves for the client's redirect URI.
func browser(redirectPrefix string) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second, CheckRedirect: func(r *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(r.URL.String(), redirectPrefix) {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

// authzParams is a good authorization request of client for verifier.
func (c *codeEnv) authzParams(client, redirect, verifier string) url.Values {
	return url.Values{"response_type": {"code"}, "client_id": {client}, "redirect_uri": {redirect}, "state": {"st-" + broker.NewID("s")},
		"code_challenge": {s256(verifier)}, "code_challenge_method": {"S256"}, "scope": {"notes.read"}, "resource": {c.ts.resource}}
}

var consentField = regexp.MustCompile(`name="consent" value="([^"]+)"`)

// authorize runs the browser side with params and answers the redirect
// back to the client (its query) and whether a consent page was shown.
func (c *codeEnv) authorize(t *testing.T, b *http.Client, params url.Values, decision string) (url.Values, bool) {
	t.Helper()
	resp, err := b.Get(c.srv.URL + oauth.AuthorizePath + "?" + params.Encode())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	consented := false
	if resp.StatusCode == http.StatusOK {
		m := consentField.FindSubmatch(body)
		if m == nil || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Fatalf("consent page: %s", body)
		}
		if strings.Contains(string(body), "<b>Host</b>") {
			t.Fatalf("consent page does not escape the client's name: %s", body)
		}
		consented = true
		resp, err = b.PostForm(c.srv.URL+oauth.ConsentPath, url.Values{"consent": {string(m[1])}, "decision": {decision}})
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorization: %d %s", resp.StatusCode, body)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || !strings.HasPrefix(loc.String(), params.Get("redirect_uri")) {
		t.Fatalf("redirected to %q", resp.Header.Get("Location"))
	}
	q := loc.Query()
	if q.Get("iss") != c.srv.URL {
		t.Fatalf("RFC 9207 iss missing or wrong: %v", q)
	}
	return q, consented
}

func (c *codeEnv) token(form url.Values) response {
	return c.do(http.MethodPost, "/v1/token", "", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()), false)
}

func codeForm(code, client, redirect, verifier string) url.Values {
	return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "client_id": {client}, "redirect_uri": {redirect}, "code_verifier": {verifier}}
}

func newVerifier() string { return broker.NewID("v") + strings.Repeat("x", 43) }

func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestOAuthCodeFlow: a person signs in upstream (scripted), consents once,
// and the host gets a one-time code at its redirect URI with state and
// iss; the code becomes a task token with sub the person and act the
// host, bound to the tool server; the tool works with it. A second
// authorization of the same host and template asks no consent. The refresh
// token renews the task and rotates; using an old one ends the task.
func TestOAuthCodeFlow(t *testing.T) {
	c := newCodeEnv(t)
	b := browser(hostRedirect)
	verifier := newVerifier()
	params := c.authzParams(hostID, hostRedirect, verifier)
	q, consented := c.authorize(t, b, params, "allow")
	if !consented || q.Get("code") == "" || q.Get("state") != params.Get("state") {
		t.Fatalf("back at the host: %v (consent shown: %v)", q, consented)
	}
	r := c.token(codeForm(q.Get("code"), hostID, hostRedirect, verifier))
	if r.Status != http.StatusOK || r.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("token: %d %s", r.Status, r.Body)
	}
	tok := r.json(t)
	access, _ := tok["access_token"].(string)
	refresh, _ := tok["refresh_token"].(string)
	claims := jwtClaims(t, access)
	act, _ := claims["act"].(map[string]any)
	if aud, _ := claims["aud"].([]any); claims["sub"] != "alice" || act == nil || act["sub"] != hostID || len(aud) != 1 || aud[0] != c.ts.resource || refresh == "" {
		t.Fatalf("token %s; claims %v", r.Body, claims)
	}
	if tok["scope"] != "template:notes notes.read" {
		t.Errorf("scope %v", tok["scope"])
	}
	bearer := &http.Client{Transport: bearerTransport(access)}
	if status, _ := c.ts.call(t, bearer, "notes.read"); status != http.StatusOK {
		t.Fatalf("allowed tool: %d", status)
	}
	if status, _ := c.ts.call(t, bearer, "notes.write"); status != http.StatusForbidden {
		t.Fatalf("tool outside the task: %d", status)
	}

	// Consent is remembered for this host and template.
	v2 := newVerifier()
	q2, consented := c.authorize(t, b, c.authzParams(hostID, hostRedirect, v2), "")
	if consented || q2.Get("code") == "" {
		t.Fatalf("second authorization: consent shown %v, %v", consented, q2)
	}

	// Refresh: a later deadline, a new refresh token; the old one is spent.
	c.clock.Advance(2 * time.Minute)
	taskID, _ := tok["task_id"].(string)
	r = c.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}, "client_id": {hostID}})
	if r.Status != http.StatusOK {
		t.Fatalf("refresh: %d %s", r.Status, r.Body)
	}
	rtok := r.json(t)
	refresh2, _ := rtok["refresh_token"].(string)
	if rtok["task_id"] != taskID || refresh2 == "" || refresh2 == refresh {
		t.Fatalf("refresh answer %s", r.Body)
	}
	rclaims := jwtClaims(t, rtok["access_token"].(string))
	if rclaims["sub"] != "alice" || rclaims["exp"].(float64) <= claims["exp"].(float64) {
		t.Fatalf("refreshed token claims %v (first exp %v)", rclaims, claims["exp"])
	}
	// The old refresh token again: a theft. The task ends, and with it
	// every token of the family.
	r = c.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}, "client_id": {hostID}})
	if m := r.json(t); r.Status != http.StatusBadRequest || m["error"] != "invalid_grant" {
		t.Fatalf("reused refresh token: %d %s", r.Status, r.Body)
	}
	task, _, err := c.raw.Task(context.Background(), taskID)
	if err != nil || task.State != broker.StateRevoked {
		t.Fatalf("task after refresh token reuse: %v %v", task.State, err)
	}
	r = c.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh2}, "client_id": {hostID}})
	if m := r.json(t); r.Status != http.StatusBadRequest || m["error"] != "invalid_grant" {
		t.Fatalf("refresh of an ended task: %d %s", r.Status, r.Body)
	}
	if status, _ := c.ts.call(t, bearer, "notes.read"); status != http.StatusUnauthorized {
		t.Fatalf("token of the ended task: %d", status)
	}
}

// TestOAuthCodeRefreshLifetime: refreshes never carry a task past its
// template's max_lifetime (30m), and the refresh token dies with it.
func TestOAuthCodeRefreshLifetime(t *testing.T) {
	c := newCodeEnv(t)
	verifier := newVerifier()
	q, _ := c.authorize(t, browser(hostRedirect), c.authzParams(hostID, hostRedirect, verifier), "allow")
	r := c.token(codeForm(q.Get("code"), hostID, hostRedirect, verifier))
	tok := r.json(t)
	created := c.clock.Now()
	refresh, _ := tok["refresh_token"].(string)
	for range 10 {
		c.clock.Advance(4 * time.Minute)
		r = c.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}, "client_id": {hostID}})
		if r.Status != http.StatusOK {
			break
		}
		m := r.json(t)
		exp := time.Unix(int64(jwtClaims(t, m["access_token"].(string))["exp"].(float64)), 0)
		if exp.After(created.Add(30*time.Minute + time.Second)) {
			t.Fatalf("refreshed token expires %s after creation, beyond max_lifetime", exp.Sub(created))
		}
		next, _ := m["refresh_token"].(string)
		if next == "" {
			return // the task reached its maximum: no more refresh token
		}
		refresh = next
	}
	if m := r.json(t); r.Status != http.StatusBadRequest || m["error"] != "invalid_grant" {
		t.Fatalf("refresh past max_lifetime: %d %s", r.Status, r.Body)
	}
}

// TestOAuthCodeRefreshRechecksUsers: a refresh applies the template's
// users rule as it is now to the person who signed in, so ops removing a
// person (or their domain) stops the refreshes of tasks held for them.
func TestOAuthCodeRefreshRechecksUsers(t *testing.T) {
	c := newCodeEnv(t)
	verifier := newVerifier()
	q, _ := c.authorize(t, browser(hostRedirect), c.authzParams(hostID, hostRedirect, verifier), "allow")
	tok := c.token(codeForm(q.Get("code"), hostID, hostRedirect, verifier)).json(t)
	refresh := func(rt string) response {
		c.clock.Advance(time.Minute)
		return c.token(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {hostID}})
	}
	r := refresh(tok["refresh_token"].(string))
	if r.Status != http.StatusOK {
		t.Fatalf("refresh while admitted: %d %s", r.Status, r.Body)
	}
	next := r.json(t)["refresh_token"].(string)
	narrowed := strings.Replace(strings.ReplaceAll(codeTemplates, "TOOL", c.ts.url), `"@example.com"`, `"@other.example"`, 1)
	set, err := policy.Load([]policy.File{{Name: "test.yaml", Data: []byte(narrowed)}}, []string{"test", oauth.ClientIssuer})
	if err != nil {
		t.Fatal(err)
	}
	c.svc.SetTemplates(set)
	r = refresh(next)
	if m := r.json(t); r.Status != http.StatusBadRequest || m["error"] != "invalid_grant" || !strings.Contains(fmt.Sprint(m["error_description"]), "on behalf of this user") {
		t.Fatalf("refresh after the users rule dropped the person: %d %s", r.Status, r.Body)
	}
}

// TestOAuthCodeRefusals: bad authorization requests and code redemptions
// answer RFC 6749 errors (redirected with iss when the redirect URI is
// known good, else directly), and none of them writes to the ledger.
func TestOAuthCodeRefusals(t *testing.T) {
	c := newCodeEnv(t)
	b := browser("http://localhost/")
	before := c.ledger.writes.Load()
	huge := strings.Repeat("x", 8192)
	good := map[string]any{"client_name": "ok", "redirect_uris": []string{"http://localhost/cimd"}, "token_endpoint_auth_method": "none"}
	docURL := func(path string, doc map[string]any, extra map[string]any) string {
		d := map[string]any{"client_id": c.cimd.URL + path}
		for k, v := range doc {
			d[k] = v
		}
		for k, v := range extra {
			d[k] = v
		}
		return c.doc(path, jsonDoc(d))
	}
	redirecting := c.doc("/redirect.json", func(w http.ResponseWriter) {
		w.Header().Set("Location", c.cimd.URL+"/good.json")
		w.WriteHeader(http.StatusFound)
	})
	direct := []struct {
		name   string
		mutate func(url.Values)
		code   string
	}{
		{"unknown client", func(v url.Values) { v.Set("client_id", "nobody") }, "invalid_client"},
		{"redirect_uri mismatch", func(v url.Values) { v.Set("redirect_uri", "http://localhost/callback/evil") }, "invalid_request"},
		{"redirect_uri missing", func(v url.Values) { v.Del("redirect_uri") }, "invalid_request"},
		{"CIMD document redirects", func(v url.Values) { v.Set("client_id", redirecting) }, "invalid_client"},
		{"CIMD document is huge", func(v url.Values) {
			v.Set("client_id", docURL("/huge.json", good, map[string]any{"padding": huge}))
		}, "invalid_client"},
		{"CIMD document names another client_id", func(v url.Values) {
			v.Set("client_id", docURL("/other.json", good, map[string]any{"client_id": "https://evil.example.com/client.json"}))
		}, "invalid_client"},
		{"CIMD document with a secret", func(v url.Values) {
			v.Set("client_id", docURL("/secret.json", good, map[string]any{"token_endpoint_auth_method": "client_secret_basic"}))
		}, "invalid_client"},
		{"CIMD client_id over http", func(v url.Values) { v.Set("client_id", "http://127.0.0.1:1/client.json") }, "invalid_client"},
		{"scope given twice", func(v url.Values) { v["scope"] = []string{"notes.read", "notes.write"} }, "invalid_request"},
	}
	for _, tc := range direct {
		t.Run("authorize/"+tc.name, func(t *testing.T) {
			v := c.authzParams(hostID, hostRedirect, newVerifier())
			tc.mutate(v)
			resp, err := b.Get(c.srv.URL + oauth.AuthorizePath + "?" + v.Encode())
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&m)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || m["error"] != tc.code || resp.Header.Get("Location") != "" {
				t.Fatalf("%d %v (Location %q)", resp.StatusCode, m, resp.Header.Get("Location"))
			}
		})
	}
	redirected := []struct {
		name   string
		mutate func(url.Values)
		code   string
	}{
		{"state missing", func(v url.Values) { v.Del("state") }, "invalid_request"},
		{"PKCE plain", func(v url.Values) { v.Set("code_challenge_method", "plain"); v.Set("code_challenge", newVerifier()) }, "invalid_request"},
		{"PKCE method missing", func(v url.Values) { v.Del("code_challenge_method") }, "invalid_request"},
		{"PKCE challenge missing", func(v url.Values) { v.Del("code_challenge") }, "invalid_request"},
		{"PKCE challenge malformed", func(v url.Values) { v.Set("code_challenge", "short") }, "invalid_request"},
		{"implicit flow", func(v url.Values) { v.Set("response_type", "token") }, "unsupported_response_type"},
		{"tool outside the template", func(v url.Values) { v.Set("scope", "template:notes notes.delete") }, "invalid_scope"},
		{"unknown template", func(v url.Values) { v.Set("scope", "template:nope notes.read") }, "unauthorized_client"},
		{"resource outside the templates", func(v url.Values) { v.Set("resource", "https://evil.example.com/mcp") }, "invalid_scope"},
		{"resource the template does not serve", func(v url.Values) {
			v.Set("scope", "template:notes notes.read")
			v.Set("resource", "https://evil.example.com/mcp")
		}, "invalid_target"},
	}
	for _, tc := range redirected {
		t.Run("authorize/"+tc.name, func(t *testing.T) {
			v := c.authzParams(hostID, hostRedirect, newVerifier())
			tc.mutate(v)
			resp, err := b.Get(c.srv.URL + oauth.AuthorizePath + "?" + v.Encode())
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			loc, _ := url.Parse(resp.Header.Get("Location"))
			if resp.StatusCode != http.StatusFound || loc == nil || !strings.HasPrefix(loc.String(), hostRedirect+"?") {
				t.Fatalf("%d, Location %q", resp.StatusCode, resp.Header.Get("Location"))
			}
			q := loc.Query()
			if q.Get("error") != tc.code || q.Get("iss") != c.srv.URL || q.Get("code") != "" || (v.Get("state") != "" && q.Get("state") != v.Get("state")) {
				t.Fatalf("redirect query %v", q)
			}
		})
	}

	// The person refuses at the consent page, or the upstream sign-in fails.
	t.Run("authorize/consent denied", func(t *testing.T) {
		q, consented := c.authorize(t, browser(hostRedirect), c.authzParams(hostID, hostRedirect, newVerifier()), "deny")
		if !consented || q.Get("error") != "access_denied" || q.Get("code") != "" {
			t.Fatalf("%v", q)
		}
	})
	t.Run("authorize/upstream refuses", func(t *testing.T) {
		c.up.mu.Lock()
		c.up.refusing = true
		c.up.mu.Unlock()
		defer func() { c.up.mu.Lock(); c.up.refusing = false; c.up.mu.Unlock() }()
		q, _ := c.authorize(t, browser(hostRedirect), c.authzParams(hostID, hostRedirect, newVerifier()), "allow")
		if q.Get("error") != "access_denied" {
			t.Fatalf("%v", q)
		}
	})
	t.Run("authorize/callback in another browser", func(t *testing.T) {
		v := c.authzParams(hostID, hostRedirect, newVerifier())
		first := browser(hostRedirect)
		first.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, err := first.Get(c.srv.URL + oauth.AuthorizePath + "?" + v.Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// Another browser (no cookie) follows the upstream link.
		resp, err = browser(hostRedirect).Get(resp.Header.Get("Location"))
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || m["error"] != "invalid_request" {
			t.Fatalf("%d %v", resp.StatusCode, m)
		}
	})

	// Redemptions: each gets a fresh code.
	person := browser(hostRedirect)
	fresh := func() (string, string) {
		v := newVerifier()
		q, _ := c.authorize(t, person, c.authzParams(hostID, hostRedirect, v), "allow")
		return q.Get("code"), v
	}
	redeem := []struct {
		name   string
		form   func(code, v string) url.Values
		status int
		code   string
	}{
		{"verifier missing", func(code, v string) url.Values {
			f := codeForm(code, hostID, hostRedirect, v)
			f.Del("code_verifier")
			return f
		}, 400, "invalid_request"},
		{"wrong verifier", func(code, v string) url.Values { return codeForm(code, hostID, hostRedirect, newVerifier()) }, 400, "invalid_grant"},
		{"plain verifier (the challenge itself)", func(code, v string) url.Values { return codeForm(code, hostID, hostRedirect, s256(v)) }, 400, "invalid_grant"},
		{"redirect_uri mismatch", func(code, v string) url.Values { return codeForm(code, hostID, "http://localhost/other", v) }, 400, "invalid_grant"},
		{"another client", func(code, v string) url.Values { return codeForm(code, "other-host", hostRedirect, v) }, 400, "invalid_grant"},
		{"client_id missing", func(code, v string) url.Values { return codeForm(code, "", hostRedirect, v) }, 401, "invalid_client"},
		{"unknown code", func(code, v string) url.Values { return codeForm("not-a-code", hostID, hostRedirect, v) }, 400, "invalid_grant"},
		{"another resource", func(code, v string) url.Values {
			f := codeForm(code, hostID, hostRedirect, v)
			f.Set("resource", "https://evil.example.com/mcp")
			return f
		}, 400, "invalid_target"},
	}
	for _, tc := range redeem {
		t.Run("token/"+tc.name, func(t *testing.T) {
			code, v := fresh()
			r := c.token(tc.form(code, v))
			if m := r.json(t); r.Status != tc.status || m["error"] != tc.code {
				t.Fatalf("%d %s", r.Status, r.Body)
			}
			// A code that failed once is spent.
			if tc.name != "unknown code" && tc.name != "verifier missing" && tc.name != "client_id missing" {
				if r := c.token(codeForm(code, hostID, hostRedirect, v)); r.Status != http.StatusBadRequest {
					t.Fatalf("code after a failed redemption: %d %s", r.Status, r.Body)
				}
			}
		})
	}
	// The store down: the authorization is redirected with
	// temporarily_unavailable, a redemption is a 503; nothing is issued.
	t.Run("store down", func(t *testing.T) {
		code, v := fresh()
		c.store.down.Store(true)
		defer c.store.down.Store(false)
		resp, err := b.Get(c.srv.URL + oauth.AuthorizePath + "?" + c.authzParams(hostID, hostRedirect, newVerifier()).Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc, _ := url.Parse(resp.Header.Get("Location"))
		if resp.StatusCode != http.StatusFound || loc == nil || loc.Query().Get("error") != "temporarily_unavailable" || loc.Query().Get("iss") != c.srv.URL {
			t.Fatalf("authorize with the store down: %d %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		r := c.token(codeForm(code, hostID, hostRedirect, v))
		if m := r.json(t); r.Status != http.StatusServiceUnavailable || m["error"] != "temporarily_unavailable" || r.Header.Get("Retry-After") == "" {
			t.Fatalf("redeem with the store down: %d %s", r.Status, r.Body)
		}
	})
	if n := c.ledger.writes.Load() - before; n != 0 {
		t.Fatalf("refusals made %d ledger writes", n)
	}

	// Code reuse: the first redemption works (one task), the second is
	// invalid_grant and writes nothing.
	code, v := fresh()
	if r := c.token(codeForm(code, hostID, hostRedirect, v)); r.Status != http.StatusOK {
		t.Fatalf("first redemption: %d %s", r.Status, r.Body)
	}
	before = c.ledger.writes.Load()
	if r := c.token(codeForm(code, hostID, hostRedirect, v)); r.Status != http.StatusBadRequest || r.json(t)["error"] != "invalid_grant" {
		t.Fatalf("code reuse: %d %s", r.Status, r.Body)
	}
	if n := c.ledger.writes.Load() - before; n != 0 {
		t.Fatalf("code reuse made %d ledger writes", n)
	}
}

// TestOAuthAuthorizeStoresNothingBeforeSignIn: anyone can start sign-ins,
// so starting one writes nothing to the store (it travels sealed in its
// cookie); a cookie only finishes the sign-in it started.
func TestOAuthAuthorizeStoresNothingBeforeSignIn(t *testing.T) {
	c := newCodeEnv(t)
	noFollow := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	start := func(b *http.Client) (*http.Response, string) {
		t.Helper()
		resp, err := b.Get(c.srv.URL + oauth.AuthorizePath + "?" + c.authzParams(hostID, hostRedirect, newVerifier()).Encode())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), c.up.srv.URL) {
			t.Fatalf("start: %d %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		return resp, resp.Header.Get("Location")
	}
	for range 1000 {
		resp, _ := start(noFollow)
		if ck := resp.Cookies(); len(ck) != 1 || len(ck[0].Value) > 3800 || !ck[0].HttpOnly {
			t.Fatalf("binding cookie: %v", ck)
		}
	}
	if n := c.store.puts.Load(); n != 0 {
		t.Fatalf("1,000 started sign-ins wrote %d store records", n)
	}
	// Two sign-ins under way: the first browser's cookie does not finish
	// the second's answer from the provider.
	first := browser(hostRedirect)
	first.CheckRedirect = noFollow.CheckRedirect
	start(first)
	_, other := start(noFollow)
	resp, err := noFollow.Get(other) // the provider answers the other sign-in
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = first.Get(resp.Header.Get("Location")) // ... into the first browser
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || m["error"] != "invalid_request" {
		t.Fatalf("a foreign sign-in's answer: %d %v", resp.StatusCode, m)
	}
	// The whole flow still works, and writes once someone signed in.
	v := newVerifier()
	q, _ := c.authorize(t, browser(hostRedirect), c.authzParams(hostID, hostRedirect, v), "allow")
	if r := c.token(codeForm(q.Get("code"), hostID, hostRedirect, v)); r.Status != http.StatusOK {
		t.Fatalf("redeem: %d %s", r.Status, r.Body)
	}
	if c.store.puts.Load() == 0 {
		t.Fatal("a finished sign-in wrote nothing: is the store still used?")
	}
}

// TestOAuthCodeCIMD: a client described by its metadata document (the
// client_id is its https URL) runs the flow; its principal is the URL.
func TestOAuthCodeCIMD(t *testing.T) {
	c := newCodeEnv(t)
	redirect := "http://127.0.0.1:9/cb"
	id := c.cimd.URL + "/clients/notes.json"
	c.doc("/clients/notes.json", jsonDoc(map[string]any{"client_id": id, "client_name": "CIMD Notes", "redirect_uris": []string{redirect},
		"grant_types": []string{"authorization_code", "refresh_token"}, "response_types": []string{"code"}, "token_endpoint_auth_method": "none"}))
	verifier := newVerifier()
	q, consented := c.authorize(t, browser(redirect), c.authzParams(id, redirect, verifier), "allow")
	if !consented || q.Get("code") == "" {
		t.Fatalf("%v", q)
	}
	r := c.token(codeForm(q.Get("code"), id, redirect, verifier))
	if r.Status != http.StatusOK {
		t.Fatalf("token: %d %s", r.Status, r.Body)
	}
	claims := jwtClaims(t, r.json(t)["access_token"].(string))
	if act, _ := claims["act"].(map[string]any); claims["sub"] != "alice" || act["sub"] != id {
		t.Fatalf("claims %v", claims)
	}
}

// TestOAuthCodeMetadata: the RFC 8414 document (and its OpenID discovery
// copy) names the authorization endpoint and what it supports.
func TestOAuthCodeMetadata(t *testing.T) {
	c := newCodeEnv(t)
	for _, path := range []string{"/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"} {
		r := c.do(http.MethodGet, path, "", "", nil, false)
		md := r.json(t)
		if r.Status != http.StatusOK || md["authorization_endpoint"] != c.srv.URL+oauth.AuthorizePath ||
			md["authorization_response_iss_parameter_supported"] != true || md["client_id_metadata_document_supported"] != true {
			t.Fatalf("%s: %d %v", path, r.Status, md)
		}
		for k, want := range map[string]string{"code_challenge_methods_supported": "S256", "response_types_supported": "code",
			"grant_types_supported": "refresh_token", "token_endpoint_auth_methods_supported": "none"} {
			got, _ := md[k].([]any)
			found := false
			for _, g := range got {
				found = found || g == want
			}
			if !found {
				t.Errorf("%s: %s = %v, lacks %s", path, k, got, want)
			}
		}
		if got, _ := md["code_challenge_methods_supported"].([]any); len(got) != 1 {
			t.Errorf("code_challenge_methods_supported %v: S256 only", got)
		}
	}
}

type bearerTransport string

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(b))
	return http.DefaultTransport.RoundTrip(r)
}

// TestOAuthCodeDevIssuerLogin: the upstream leg for real: Valet signs the
// person in at the development issuer (its authorization endpoint, PKCE,
// nonce) through identity.Login, the browser typing the name as
// login_hint; the ID token it gets back becomes the task's subject.
func TestOAuthCodeDevIssuerLogin(t *testing.T) {
	mux := http.NewServeMux()
	idpSrv := httptest.NewServer(mux)
	t.Cleanup(idpSrv.Close)
	idp, err := devidp.New(idpSrv.URL+"/dev", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/dev/", http.StripPrefix("/dev", idp.Handler()))
	ts, ln := newOAuthToolServer(t)
	templates := strings.ReplaceAll(`
templates:
  - name: notes
    principals:
      - issuer: clients
        condition: 'claims.sub == "notes-host"'
    users:
      - issuer: people
        condition: 'claims.sub == "alice"'
    ttl: {default: 5m, max: 10m}
    tools: [notes.read]
    audiences: [TOOL/mcp]
`, "TOOL", ts.url)
	e := newEnv(t, envOptions{templates: templates,
		people:        []identity.IssuerConfig{{Name: "people", IssuerURL: idp.Issuer(), Audiences: []string{"valet-authorize"}, StaticJWKS: idp.JWKS()}},
		upstreamLogin: &identity.LoginConfig{IssuerURL: idp.Issuer(), ClientID: "valet-authorize"},
		oauthInteractive: &oauth.InteractiveConfig{
			Clients: []oauth.PublicClient{{ID: hostID, RedirectURIs: []string{hostRedirect}, Templates: []string{"notes"}}},
		}})
	ts.start(t, e, ln)
	c := &codeEnv{env: e, ts: ts}
	signIn := func(name string) url.Values {
		b := browser(hostRedirect)
		follow := b.CheckRedirect
		b.CheckRedirect = func(r *http.Request, via []*http.Request) error {
			if strings.HasPrefix(r.URL.String(), idp.Issuer()+"/authorize") {
				q := r.URL.Query()
				q.Set("login_hint", name) // the person types their name
				r.URL.RawQuery = q.Encode()
			}
			return follow(r, via)
		}
		verifier := newVerifier()
		q, consented := c.authorize(t, b, c.authzParams(hostID, hostRedirect, verifier), "allow")
		if !consented {
			t.Fatalf("no consent asked of %s", name)
		}
		q.Set("verifier", verifier)
		return q
	}
	q := signIn("alice")
	r := c.token(codeForm(q.Get("code"), hostID, hostRedirect, q.Get("verifier")))
	if r.Status != http.StatusOK {
		t.Fatalf("token: %d %s", r.Status, r.Body)
	}
	claims := jwtClaims(t, r.json(t)["access_token"].(string))
	if act, _ := claims["act"].(map[string]any); claims["sub"] != "alice" || act["sub"] != hostID {
		t.Fatalf("claims %v", claims)
	}
	// bob signs in fine, but the template acts for alice only: the code
	// is refused at the token endpoint, and nothing is recorded.
	before := e.ledger.writes.Load()
	q = signIn("bob")
	r = c.token(codeForm(q.Get("code"), hostID, hostRedirect, q.Get("verifier")))
	if m := r.json(t); r.Status != http.StatusBadRequest || m["error"] != "invalid_grant" {
		t.Fatalf("bob: %d %s", r.Status, r.Body)
	}
	if n := e.ledger.writes.Load() - before; n != 0 {
		t.Fatalf("a refused person made %d ledger writes", n)
	}
}
