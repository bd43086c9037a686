package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/examples/mcpserver"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/verify"
)

// mcpTemplates admit the registered client support-agent and the test
// issuer's agents for the example MCP server at MCP (its resource MCP/mcp),
// with a sensitive tool.
const mcpTemplates = `
templates:
  - name: support
    principals:
      - issuer: clients
        condition: 'claims.sub == "support-agent"'
      - issuer: test
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read, tickets.comment]
    audiences: [MCP/mcp]
    sensitive_tools:
      - tool: tickets.delete
        rule: policy
        condition: 'action.args.ticket != "1"'
        resource: db:tickets
`

// mcpEnv is Valet with support-agent registered and the example MCP server
// (examples/mcpserver) running behind verify.MCP.
type mcpEnv struct {
	*env
	url      string // the MCP server's base URL
	resource string // its MCP endpoint, the tokens' audience
	key      ed25519.PrivateKey
	// namedCalls counts requests that reached the server with the
	// SEP-2243 headers Mcp-Method: tools/call and an Mcp-Name.
	namedCalls atomic.Int64
}

func newMCPEnv(t *testing.T, o envOptions) *mcpEnv {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &mcpEnv{url: "http://" + ln.Addr().String()}
	m.resource = m.url + mcpserver.Path
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	m.key = priv
	o.templates = strings.ReplaceAll(mcpTemplates, "MCP", m.url)
	o.oauthClients = []oauth.Client{{ID: "support-agent", Templates: []string{"support"},
		Keys: jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: "support-1", Algorithm: "EdDSA"}}}}}
	o.agent = actionAgentConfig
	m.env = newEnv(t, o)
	ver, err := verify.New(verify.Config{Issuer: m.srv.URL, Audience: m.resource, ClientID: clientID, ClientSecret: clientSecret,
		Now: m.clock.Now, PublicURL: m.url, Scopes: []string{"template:support", "tickets.read", "tickets.comment", "tickets.delete"}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := mcpserver.New(ver)
	if err != nil {
		t.Fatal(err)
	}
	seen := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Mcp-Method") == "tools/call" && r.Header.Get("Mcp-Name") != "" {
			m.namedCalls.Add(1)
		}
		s.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: seen, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return m
}

// tokenConfig is support-agent's client-credentials request (a
// private_key_jwt client assertion) for scope, bound to the MCP server.
func (m *mcpEnv) tokenConfig(t *testing.T, scope ...string) *clientcredentials.Config {
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"iss": "support-agent", "sub": "support-agent",
		"aud": m.srv.URL + "/v1/token", "iat": m.clock.Now().Unix(), "exp": m.clock.Now().Add(time.Minute).Unix(), "jti": broker.NewID("jti")})
	tok.Header["kid"] = "support-1"
	assertion, err := tok.SignedString(m.key)
	if err != nil {
		t.Fatal(err)
	}
	return &clientcredentials.Config{ClientID: "support-agent", TokenURL: m.srv.URL + "/v1/token", AuthStyle: oauth2.AuthStyleInParams,
		Scopes: scope, EndpointParams: url.Values{"client_assertion_type": {oauth.ClientAssertionType},
			"client_assertion": {assertion}, "resource": {m.resource}}}
}

// actionHeader adds the Valet-Action header while one is set.
type actionHeader struct {
	mu    sync.Mutex
	token string
	base  http.RoundTripper
}

func (a *actionHeader) set(tok string) { a.mu.Lock(); a.token = tok; a.mu.Unlock() }

func (a *actionHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	a.mu.Lock()
	tok := a.token
	a.mu.Unlock()
	if tok != "" {
		r = r.Clone(r.Context())
		r.Header.Set(verify.ActionHeader, tok)
	}
	return a.base.RoundTrip(r)
}

// TestMCPInteropGoSDK: the official Go MCP SDK's client, with a token from
// Valet's token endpoint (client credentials, private_key_jwt, through
// golang.org/x/oauth2), lists and calls the example MCP server's tools: a
// granted tool works, another is 403 insufficient_scope and the session
// goes on, the sensitive tool works once with an action token for exactly
// its arguments, and once the task is completed the next call fails. Run
// with the SDK's latest protocol (2026-07-28: stateless, with the Mcp-Method
// and Mcp-Name headers the middleware checks) and with the session-based
// 2025-06-18.
func TestMCPInteropGoSDK(t *testing.T) {
	for _, version := range []string{"2026-07-28", "2025-06-18"} {
		t.Run(version, func(t *testing.T) { goSDKInterop(t, version) })
	}
}

func goSDKInterop(t *testing.T, version string) {
	m := newMCPEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	octx := context.WithValue(ctx, oauth2.HTTPClient, m.client) // token answers checked against openapi.yaml
	tok, err := m.tokenConfig(t, "template:support", "tickets.read", "tickets.delete").Token(octx)
	if err != nil {
		t.Fatal(err)
	}
	taskID, _ := tok.Extra("task_id").(string)
	if taskID == "" {
		t.Fatalf("no task id in %+v", tok)
	}
	action := &actionHeader{base: http.DefaultTransport}
	httpClient := &http.Client{Transport: &oauth2.Transport{Source: oauth2.StaticTokenSource(tok), Base: action}, Timeout: 10 * time.Second}
	client := mcp.NewClient(&mcp.Implementation{Name: "valet-e2e", Version: "1.0.0"}, nil)
	session, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: m.resource, HTTPClient: httpClient, DisableStandaloneSSE: true},
		&mcp.ClientSessionOptions{ProtocolVersion: version})
	if err != nil {
		t.Fatalf("connecting: %v", err)
	}
	defer session.Close()
	if got := session.InitializeResult().ProtocolVersion; got != version {
		t.Fatalf("negotiated protocol %q, want %q", got, version)
	}

	tools, err := session.ListTools(ctx, nil)
	if err != nil {
		t.Fatalf("tools/list: %v", err)
	}
	if len(tools.Tools) != 3 {
		t.Errorf("tools/list: %d tools", len(tools.Tools))
	}
	res, err := session.CallTool(ctx, &mcp.CallToolParams{Name: "tickets.read", Arguments: map[string]any{"ticket": "7"}})
	if err != nil || res.IsError {
		t.Fatalf("granted tool: %v %+v", err, res)
	}
	var ticket mcpserver.Ticket
	if b, _ := json.Marshal(res.StructuredContent); json.Unmarshal(b, &ticket) != nil || ticket.TaskID != taskID || ticket.ReadBy != "support-agent" {
		t.Errorf("tickets.read answered %s", b)
	}

	// A tool the task was not granted: 403, and the SDK surfaces the
	// JSON-RPC error of the refusal; the session is still usable.
	_, err = session.CallTool(ctx, &mcp.CallToolParams{Name: "tickets.comment", Arguments: map[string]any{"ticket": "7", "text": "hi"}})
	if err == nil || !strings.Contains(err.Error(), `tool "tickets.comment" is not granted`) || !strings.Contains(err.Error(), "Forbidden") {
		t.Errorf("ungranted tool: %v", err)
	}
	if status, challenge := mcpPost(t, m.resource, tok.AccessToken, "tickets.comment"); status != http.StatusForbidden ||
		!strings.Contains(challenge, `error="insufficient_scope", scope="template:support tickets.comment"`) {
		t.Errorf("ungranted tool over HTTP: %d %q", status, challenge)
	}

	// The sensitive tool: refused without an action token; works once with
	// one for exactly its arguments.
	del := &mcp.CallToolParams{Name: "tickets.delete", Arguments: map[string]any{"ticket": "7"}}
	if _, err := session.CallTool(ctx, del); err == nil || !strings.Contains(err.Error(), "needs an action token") {
		t.Errorf("sensitive tool without an action token: %v", err)
	}
	a := &agentSession{e: m.env, taskID: taskID, token: tok.AccessToken}
	action.set(a.actionToken("tickets.delete", `{"ticket":"7"}`))
	if res, err := session.CallTool(ctx, del); err != nil || res.IsError {
		t.Errorf("sensitive tool with its action token: %v %+v", err, res)
	}
	if _, err := session.CallTool(ctx, del); err == nil || !strings.Contains(err.Error(), "used already") {
		t.Errorf("action token reused: %v", err)
	}
	action.set(a.actionToken("tickets.delete", `{"ticket":"8"}`))
	if _, err := session.CallTool(ctx, del); err == nil || !strings.Contains(err.Error(), "other arguments") {
		t.Errorf("action token for other arguments: %v", err)
	}
	action.set("")
	if named := m.namedCalls.Load(); (version >= "2026-07-28") != (named > 0) {
		t.Errorf("protocol %s: %d tools/call requests carried Mcp-Method and Mcp-Name", version, named)
	}

	// The task ends: its token stops working at once, on tools/call and
	// on every other method.
	if r := m.do(http.MethodPost, "/v1/tasks/"+taskID+"/complete", tok.AccessToken, "", nil, false); r.Status != http.StatusOK {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	if _, err := session.CallTool(ctx, &mcp.CallToolParams{Name: "tickets.read", Arguments: map[string]any{"ticket": "7"}}); err == nil {
		t.Error("granted tool after the task ended: no error")
	}
	if status, challenge := mcpPost(t, m.resource, tok.AccessToken, "tickets.read"); status != http.StatusUnauthorized ||
		!strings.Contains(challenge, `resource_metadata="`+m.url+`/.well-known/oauth-protected-resource/mcp"`) {
		t.Errorf("after the task ended: %d %q", status, challenge)
	}
	if _, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: m.resource, HTTPClient: httpClient}, nil); err == nil {
		t.Error("initialize after the task ended: no error")
	}
}

// TestMCPInteropNoToken: an MCP client without a token is told where to
// find Valet (RFC 9728), and the metadata there names Valet, whose RFC
// 8414 metadata names its token endpoint: all an MCP client needs to start.
func TestMCPInteropNoToken(t *testing.T) {
	m := newMCPEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := mcp.NewClient(&mcp.Implementation{Name: "valet-e2e", Version: "1.0.0"}, nil)
	_, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: m.resource}, nil)
	if err == nil || !strings.Contains(err.Error(), "Unauthorized") {
		t.Errorf("connecting without a token: %v", err)
	}
	status, challenge := mcpPost(t, m.resource, "", "tickets.read")
	const prefix = `Bearer resource_metadata="`
	if status != http.StatusUnauthorized || !strings.HasPrefix(challenge, prefix) {
		t.Fatalf("%d %q", status, challenge)
	}
	mdURL := strings.SplitN(challenge[len(prefix):], `"`, 2)[0]
	var prm struct {
		Resource             string   `json:"resource"`
		AuthorizationServers []string `json:"authorization_servers"`
		ScopesSupported      []string `json:"scopes_supported"`
	}
	getJSON(t, mdURL, &prm)
	if prm.Resource != m.resource || len(prm.AuthorizationServers) != 1 || prm.AuthorizationServers[0] != m.srv.URL || len(prm.ScopesSupported) == 0 {
		t.Fatalf("protected resource metadata %+v", prm)
	}
	var asm struct {
		TokenEndpoint string `json:"token_endpoint"`
	}
	getJSON(t, prm.AuthorizationServers[0]+"/.well-known/oauth-authorization-server", &asm)
	if asm.TokenEndpoint != m.srv.URL+"/v1/token" {
		t.Errorf("authorization server metadata: token_endpoint %q", asm.TokenEndpoint)
	}
}

// mcpPost posts a tools/call of tool with bearer (none when "") and
// returns the status and challenge.
func mcpPost(t *testing.T, endpoint, bearer, tool string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, endpoint, strings.NewReader(
		`{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"`+tool+`","arguments":{"ticket":"7"}}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("WWW-Authenticate")
}

func getJSON(t *testing.T, u string, out any) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", u, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", u, errors.Join(err))
	}
}
