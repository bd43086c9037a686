package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	oauth2jwt "golang.org/x/oauth2/jwt"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/delegation"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/verify"
)

// oauthTemplates admit the registered client billing-agent (issuer
// clients) and the test issuer's agents, both for the tool server at TOOL.
const oauthTemplates = `
templates:
  - name: billing
    principals:
      - issuer: clients
        condition: 'claims.sub == "billing-agent"'
    ttl: {default: 5m, max: 15m}
    tools: [invoices.read, invoices.list]
    audiences: [TOOL/mcp, https://other.example.com]
  - name: triage
    principals:
      - issuer: test
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read, tickets.comment]
    audiences: [TOOL/mcp]
`

// oauthToolServer is an MCP-style tool server protected by verify: the tool
// is the last path element under /mcp/.
type oauthToolServer struct {
	url      string
	resource string
	srv      *httptest.Server
}

func newOAuthToolServer(t *testing.T) (*oauthToolServer, net.Listener) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	return &oauthToolServer{url: u, resource: u + "/mcp"}, ln
}

func (ts *oauthToolServer) start(t *testing.T, e *env, ln net.Listener) {
	ver, err := verify.New(verify.Config{Issuer: e.srv.URL, Audience: ts.resource, ClientID: clientID, ClientSecret: clientSecret,
		Now: e.clock.Now, Scopes: []string{"template:billing", "invoices.read", "invoices.list"}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /.well-known/oauth-protected-resource/mcp", ver.ProtectedResourceMetadata())
	mux.Handle("/mcp/", ver.Middleware(func(r *http.Request) string { return strings.TrimPrefix(r.URL.Path, "/mcp/") })(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })))
	ts.srv = &httptest.Server{Listener: ln, Config: &http.Server{Handler: mux}}
	ts.srv.Start()
	t.Cleanup(ts.srv.Close)
}

// call calls tool with client and returns the status and challenge.
func (ts *oauthToolServer) call(t *testing.T, client *http.Client, tool string) (int, string) {
	t.Helper()
	resp, err := client.Get(ts.url + "/mcp/" + tool)
	if err != nil {
		t.Fatalf("calling %s: %v", tool, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

func newOAuthEnv(t *testing.T, clientKey ed25519.PublicKey, o envOptions) (*env, *oauthToolServer) {
	ts, ln := newOAuthToolServer(t)
	o.templates = strings.ReplaceAll(oauthTemplates, "TOOL", ts.url)
	o.oauthClients = []oauth.Client{{ID: "billing-agent", Templates: []string{"billing"},
		Keys: jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: clientKey, KeyID: "billing-1", Algorithm: "EdDSA"}}}}}
	e := newEnv(t, o)
	ts.start(t, e, ln)
	return e, ts
}

// clientAssertion is billing-agent's private_key_jwt for Valet's token endpoint.
func clientAssertion(t *testing.T, e *env, key ed25519.PrivateKey) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"iss": "billing-agent", "sub": "billing-agent",
		"aud": e.srv.URL + "/v1/token", "iat": e.clock.Now().Unix(), "exp": e.clock.Now().Add(time.Minute).Unix(), "jti": broker.NewID("jti")})
	tok.Header["kid"] = "billing-1"
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestOAuthMetadata: the RFC 8414 document names the token endpoint and
// everything it supports (its shape is also checked against openapi.yaml).
func TestOAuthMetadata(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	e, ts := newOAuthEnv(t, pub, envOptions{})
	r := e.do(http.MethodGet, "/.well-known/oauth-authorization-server", "", "", nil, false)
	if r.Status != http.StatusOK {
		t.Fatalf("%d %s", r.Status, r.Body)
	}
	md := r.json(t)
	if md["issuer"] != e.srv.URL || md["token_endpoint"] != e.srv.URL+"/v1/token" || md["jwks_uri"] != e.srv.URL+"/.well-known/jwks.json" {
		t.Errorf("metadata %v", md)
	}
	lists := map[string][]string{
		"grant_types_supported":                            {oauth.GrantJWTBearer, "client_credentials", delegation.GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported":            {"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": {"EdDSA", "ES256", "RS256"},
		"dpop_signing_alg_values_supported":                {"EdDSA", "ES256"},
		"authorization_details_types_supported":            {"valet_task"},
		"scopes_supported":                                 {"template:billing", "template:triage"},
	}
	for k, want := range lists {
		got, _ := md[k].([]any)
		for _, w := range want {
			found := false
			for _, g := range got {
				found = found || g == w
			}
			if !found {
				t.Errorf("%s = %v, lacks %s", k, got, w)
			}
		}
	}
	// The tool server's RFC 9728 metadata points at Valet.
	resp, err := http.Get(ts.url + "/.well-known/oauth-protected-resource/mcp")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var prm map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&prm); err != nil {
		t.Fatal(err)
	}
	if as, _ := prm["authorization_servers"].([]any); prm["resource"] != ts.resource || len(as) != 1 || as[0] != e.srv.URL {
		t.Errorf("protected resource metadata %v", prm)
	}
}

// TestOAuthTokenRefusals: refusals over HTTP are RFC 6749 errors in the
// shape openapi.yaml gives, with nothing written to the ledger; the
// token exchange keeps its own answers.
func TestOAuthTokenRefusals(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	e, ts := newOAuthEnv(t, pub, envOptions{})
	post := func(form url.Values) response {
		return e.do(http.MethodPost, "/v1/token", "", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()), false)
	}
	before := e.ledger.writes.Load()
	cc := func(scope, resource string) url.Values {
		v := url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {oauth.ClientAssertionType},
			"client_assertion": {clientAssertion(t, e, priv)}, "scope": {scope}}
		if resource != "" {
			v.Set("resource", resource)
		}
		return v
	}
	cases := []struct {
		name   string
		form   url.Values
		status int
		code   string
	}{
		{"unsupported grant", url.Values{"grant_type": {"password"}, "username": {"a"}}, 400, "unsupported_grant_type"},
		{"bad assertion", url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {"x.y.z"}, "scope": {"template:triage tickets.read"}}, 400, "invalid_grant"},
		{"unknown client", url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {oauth.ClientAssertionType}, "client_assertion": {"x.y.z"}, "scope": {"template:billing invoices.read"}}, 401, "invalid_client"},
		{"resource outside the template", cc("template:billing invoices.read", "https://evil.example.com"), 400, "invalid_target"},
		{"tool outside the template", cc("template:billing payments.send", ts.resource), 400, "invalid_scope"},
		{"template the client may not use", cc("template:triage tickets.read", ""), 400, "unauthorized_client"},
		{"bad authorization_details", url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {e.identity("agent-1")}, "authorization_details": {`[{"type":"valet_task"}]`}}, 400, "invalid_authorization_details"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := post(tc.form)
			if m := r.json(t); r.Status != tc.status || m["error"] != tc.code || r.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("%d %s", r.Status, r.Body)
			}
		})
	}
	if n := e.ledger.writes.Load() - before; n != 0 {
		t.Errorf("refusals made %d ledger writes", n)
	}
	// The token exchange is unchanged: its errors keep Valet's shape.
	r := post(url.Values{"grant_type": {delegation.GrantTypeTokenExchange}})
	if m := r.json(t); r.Status != http.StatusBadRequest || m["message"] == nil {
		t.Errorf("exchange: %d %s", r.Status, r.Body)
	}
	// A dependency down is a 503 with a JSON body.
	e.redis.Kill()
	r = post(url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {e.identity("agent-1")}, "scope": {"template:triage tickets.read"}})
	if m := r.json(t); r.Status != http.StatusServiceUnavailable || m["error"] != "temporarily_unavailable" {
		t.Errorf("redis down: %d %s", r.Status, r.Body)
	}
}

// TestOAuthInteropClientCredentials: golang.org/x/oauth2's clientcredentials,
// with a private_key_jwt assertion in EndpointParams, gets a token for the
// tool server; an allowed tool works, another is 403 insufficient_scope,
// and once the task is completed the next call fails.
func TestOAuthInteropClientCredentials(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	e, ts := newOAuthEnv(t, pub, envOptions{})
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, e.client) // answers checked against openapi.yaml
	cfg := clientcredentials.Config{
		ClientID: "billing-agent", TokenURL: e.srv.URL + "/v1/token", AuthStyle: oauth2.AuthStyleInParams,
		Scopes: []string{"template:billing", "invoices.read"},
		EndpointParams: url.Values{"client_assertion_type": {oauth.ClientAssertionType},
			"client_assertion": {clientAssertion(t, e, priv)}, "resource": {ts.resource}},
	}
	tok, err := cfg.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	taskID, _ := tok.Extra("task_id").(string)
	if tok.TokenType != "Bearer" || taskID == "" || tok.Extra("scope") != "template:billing invoices.read" {
		t.Fatalf("token %+v, task %q, scope %v", tok, taskID, tok.Extra("scope"))
	}
	client := oauth2.NewClient(context.Background(), oauth2.StaticTokenSource(tok))
	if status, _ := ts.call(t, client, "invoices.read"); status != http.StatusOK {
		t.Fatalf("allowed tool: %d", status)
	}
	status, challenge := ts.call(t, client, "invoices.list")
	if status != http.StatusForbidden || !strings.Contains(challenge, `error="insufficient_scope", scope="template:billing invoices.list"`) {
		t.Errorf("tool outside the task: %d %q", status, challenge)
	}
	// The same assertion again is refused (replay).
	if _, err := cfg.Token(ctx); !isOAuthError(err, "invalid_client") {
		t.Errorf("replayed assertion: %v", err)
	}
	if r := e.do(http.MethodPost, "/v1/tasks/"+taskID+"/complete", tok.AccessToken, "", nil, false); r.Status != http.StatusOK {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	status, challenge = ts.call(t, client, "invoices.read")
	if status != http.StatusUnauthorized || !strings.Contains(challenge, `resource_metadata="`+ts.url+`/.well-known/oauth-protected-resource/mcp"`) {
		t.Errorf("after completion: %d %q", status, challenge)
	}
}

// TestOAuthInteropJWTBearer: golang.org/x/oauth2/jwt signs its own
// assertion (here with a key the test issuer publishes: a workload identity
// token) and posts the RFC 7523 jwt-bearer grant, the task in the
// assertion's scope claim; once the agent is frozen its next call fails.
func TestOAuthInteropJWTBearer(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	idp := oidctest.New(t)
	kid := idp.AddSigner(rsaKey, "RS256")
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	e, ts := newOAuthEnv(t, pub, envOptions{idp: idp, incident: true})
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, e.client)
	cfg := &oauth2jwt.Config{
		Email: idp.URL(), Subject: "agent-9", Audience: "valet", TokenURL: e.srv.URL + "/v1/token",
		PrivateKey:   pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}),
		PrivateKeyID: kid, Scopes: []string{"template:triage", "tickets.read"}, Expires: 5 * time.Minute,
		PrivateClaims: map[string]any{"jti": broker.NewID("jti")},
	}
	// Token requests go through the spec-checking client; tool calls not.
	client := oauth2.NewClient(context.Background(), cfg.TokenSource(ctx))
	if status, _ := ts.call(t, client, "tickets.read"); status != http.StatusOK {
		t.Fatalf("allowed tool: %d", status)
	}
	if status, _ := ts.call(t, client, "tickets.comment"); status != http.StatusForbidden {
		t.Errorf("tool outside the task: %d", status)
	}
	rita := e.adminToken("rita", "valet-responders")
	if r := e.adminDo(http.MethodPost, "/v1/admin/controls", rita, `{"kind":"freeze_agent","target":"agent-9","reason":"leaked"}`); r.Status != http.StatusCreated {
		t.Fatalf("freeze: %d %s", r.Status, r.Body)
	}
	e.inc.controls.Reload(context.Background())
	if status, _ := ts.call(t, client, "tickets.read"); status != http.StatusUnauthorized {
		t.Errorf("after the freeze: %d", status)
	}
	// A new token for the frozen agent is refused, and writes nothing.
	before := e.ledger.writes.Load()
	cfg.PrivateClaims = map[string]any{"jti": broker.NewID("jti")}
	_, err = cfg.TokenSource(ctx).Token()
	// x/oauth2/jwt leaves the error unparsed: read the body.
	var re *oauth2.RetrieveError
	var body struct {
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	if !errors.As(err, &re) || json.Unmarshal(re.Body, &body) != nil || body.Error != "invalid_grant" || !strings.Contains(body.ErrorDescription, "frozen") {
		t.Errorf("token for a frozen agent: %v", err)
	}
	// The same assertion again (no jti, same second) would be a replay:
	// x/oauth2/jwt's assertions carry no jti unless told.
	if n := e.ledger.writes.Load() - before; n != 0 {
		t.Errorf("%d ledger writes", n)
	}
}

func isOAuthError(err error, code string) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && re.ErrorCode == code
}
