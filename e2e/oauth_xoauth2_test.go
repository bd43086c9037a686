package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	oauth2jwt "golang.org/x/oauth2/jwt"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/oauth"
)

// These tests drive Valet's token endpoint with golang.org/x/oauth2 alone
// (no Valet code on the client side) and spend the tokens at the example
// MCP server (examples/mcpserver behind verify.MCP) with plain JSON-RPC
// over the oauth2 HTTP client: a second client, independent of the MCP
// SDKs of mcp_test.go and mcpts.

// mcpRPC posts one JSON-RPC request to the MCP endpoint with client and
// returns the status, the WWW-Authenticate challenge and, on 200, the
// JSON-RPC answer (read from JSON or from the first SSE data line).
func mcpRPC(t *testing.T, client *http.Client, endpoint, method string, params any) (int, string, map[string]any) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
	req, err := http.NewRequest(http.MethodPost, endpoint, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", "2025-06-18")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	challenge := resp.Header.Get("WWW-Authenticate")
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, challenge, nil
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for raw = nil; sc.Scan(); {
			if data, ok := strings.CutPrefix(sc.Text(), "data:"); ok {
				raw = []byte(strings.TrimSpace(data))
				break
			}
		}
	}
	var answer map[string]any
	if err := json.Unmarshal(raw, &answer); err != nil {
		t.Fatalf("%s: answer is not JSON-RPC: %v: %s", method, err, raw)
	}
	return resp.StatusCode, challenge, answer
}

// readTicket calls tickets.read and returns the status, the challenge and
// the task id the server saw in the token (from the tool's result).
func readTicket(t *testing.T, client *http.Client, endpoint string) (int, string, string) {
	t.Helper()
	status, challenge, answer := mcpRPC(t, client, endpoint, "tools/call", map[string]any{"name": "tickets.read", "arguments": map[string]any{"ticket": "7"}})
	if status != http.StatusOK {
		return status, challenge, ""
	}
	result, _ := answer["result"].(map[string]any)
	sc, _ := result["structuredContent"].(map[string]any)
	if result == nil || result["isError"] == true || sc == nil {
		t.Fatalf("tickets.read answered %v", answer)
	}
	taskID, _ := sc["task_id"].(string)
	return status, challenge, taskID
}

// checkTaskTokenAtMCP checks what a task token granted tickets.read (and
// not tickets.comment) does at the MCP server: tools/list and the granted
// tool work, the other tool is 403 insufficient_scope naming it.
func checkTaskTokenAtMCP(t *testing.T, m *mcpEnv, client *http.Client, taskID string) {
	t.Helper()
	if status, _, answer := mcpRPC(t, client, m.resource, "tools/list", map[string]any{}); status != http.StatusOK || answer["result"] == nil {
		t.Errorf("tools/list: %d %v", status, answer)
	}
	if status, challenge, seen := readTicket(t, client, m.resource); status != http.StatusOK || seen != taskID {
		t.Errorf("granted tool: %d %q, task %q (want %q)", status, challenge, seen, taskID)
	}
	status, challenge, _ := mcpRPC(t, client, m.resource, "tools/call", map[string]any{"name": "tickets.comment", "arguments": map[string]any{"ticket": "7", "text": "hi"}})
	if status != http.StatusForbidden || !strings.Contains(challenge, `error="insufficient_scope"`) || !strings.Contains(challenge, "tickets.comment") {
		t.Errorf("tool outside the task: %d %q", status, challenge)
	}
}

// TestXOAuth2ClientCredentials: golang.org/x/oauth2/clientcredentials with
// a private_key_jwt client assertion in EndpointParams (AuthStyleInParams:
// there is no secret) gets a task token for the MCP server; once the agent
// is frozen, the next call with the same oauth2 client fails, and so does
// a new token request, without a ledger write.
func TestXOAuth2ClientCredentials(t *testing.T) {
	m := newMCPEnv(t, envOptions{incident: true})
	octx := context.WithValue(context.Background(), oauth2.HTTPClient, m.client) // token answers checked against openapi.yaml
	cfg := m.tokenConfig(t, "template:support", "tickets.read")
	src := cfg.TokenSource(octx)
	tok, err := src.Token()
	if err != nil {
		t.Fatal(err)
	}
	taskID, _ := tok.Extra("task_id").(string)
	if tok.Type() != "Bearer" || taskID == "" || tok.Extra("scope") != "template:support tickets.read" || tok.Expiry.IsZero() {
		t.Fatalf("token %+v, extra task %q scope %v", tok, taskID, tok.Extra("scope"))
	}
	// The token's audience is exactly the resource asked for (RFC 8707).
	if aud := m.introspect(tok.AccessToken)["aud"]; !audIs(aud, m.resource) {
		t.Errorf("aud = %v, want %s", aud, m.resource)
	}
	// The tool calls go straight to the MCP server (not through the
	// client that checks Valet's contract).
	client := oauth2.NewClient(context.Background(), oauth2.ReuseTokenSource(tok, src))
	checkTaskTokenAtMCP(t, m, client, taskID)

	rita := m.adminToken("rita", "valet-responders")
	if r := m.adminDo(http.MethodPost, "/v1/admin/controls", rita, `{"kind":"freeze_agent","target":"support-agent","reason":"leaked key"}`); r.Status != http.StatusCreated {
		t.Fatalf("freeze: %d %s", r.Status, r.Body)
	}
	m.inc.controls.Reload(context.Background())
	if status, challenge, _ := readTicket(t, client, m.resource); status != http.StatusUnauthorized || !strings.Contains(challenge, `error="invalid_token"`) {
		t.Errorf("after the freeze: %d %q", status, challenge)
	}
	before := m.ledger.writes.Load()
	_, err = m.tokenConfig(t, "template:support", "tickets.read").Token(octx)
	if re := (*oauth2.RetrieveError)(nil); !errors.As(err, &re) || re.ErrorCode != oauth.ErrUnauthorizedClient || !strings.Contains(re.ErrorDescription, "frozen") {
		t.Errorf("a token for a frozen client: %v", err)
	}
	if n := m.ledger.writes.Load() - before; n != 0 {
		t.Errorf("%d ledger writes", n)
	}
}

// TestXOAuth2ClientCredentialsReplay: clientcredentials re-sends its
// EndpointParams each time it needs a token, so a fixed client assertion
// serves once: the second request is invalid_client (jti replay), and a
// caller must mint a fresh assertion per request.
func TestXOAuth2ClientCredentialsReplay(t *testing.T) {
	m := newMCPEnv(t, envOptions{})
	octx := context.WithValue(context.Background(), oauth2.HTTPClient, m.client)
	cfg := m.tokenConfig(t, "template:support", "tickets.read")
	if _, err := cfg.Token(octx); err != nil {
		t.Fatal(err)
	}
	before := m.ledger.writes.Load()
	_, err := cfg.Token(octx)
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != oauth.ErrInvalidClient || re.Response.StatusCode != http.StatusUnauthorized || re.ErrorDescription == "" {
		t.Errorf("replayed client assertion: %v", err)
	}
	if n := m.ledger.writes.Load() - before; n != 0 {
		t.Errorf("%d ledger writes", n)
	}
}

// TestXOAuth2JWTBearer: the RFC 7523 jwt-bearer grant from
// golang.org/x/oauth2, two ways. golang.org/x/oauth2/jwt signs its own
// assertion (Google's service-account flow; RS256 only, the task in the
// assertion's scope claim), here with a key the test issuer publishes. It
// cannot send an assertion minted elsewhere, which is what a workload
// identity token (Kubernetes, GitHub Actions, SPIFFE) is: for that,
// clientcredentials with grant_type and assertion in EndpointParams posts
// the grant as RFC 7523 section 2.1 spells it. Both tokens work at the MCP
// server until their task is completed.
func TestXOAuth2JWTBearer(t *testing.T) {
	idp := oidctest.New(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	kid := idp.AddSigner(rsaKey, "RS256")
	m := newMCPEnv(t, envOptions{idp: idp})
	octx := context.WithValue(context.Background(), oauth2.HTTPClient, m.client)

	signed := &oauth2jwt.Config{
		Email: idp.URL(), Subject: "agent-9", Audience: "valet", TokenURL: m.srv.URL + oauth.TokenPath,
		PrivateKey:   pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}),
		PrivateKeyID: kid, Scopes: []string{"template:support", "tickets.read"}, Expires: 5 * time.Minute,
		PrivateClaims: map[string]any{"jti": broker.NewID("jti")},
	}
	workload := m.idp.Token(t, map[string]any{"sub": "agent-10", "jti": broker.NewID("jti")}, oidctest.WithNow(m.clock.Now()))
	generic := &clientcredentials.Config{
		TokenURL: m.srv.URL + oauth.TokenPath, AuthStyle: oauth2.AuthStyleInParams,
		Scopes:         []string{"template:support", "tickets.read"},
		EndpointParams: url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {workload}, "resource": {m.resource}},
	}
	for _, tc := range []struct {
		name  string
		src   oauth2.TokenSource
		agent string
	}{
		{"x/oauth2/jwt", signed.TokenSource(octx), "agent-9"},
		{"clientcredentials with the grant_type overridden", generic.TokenSource(octx), "agent-10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := tc.src.Token()
			if err != nil {
				t.Fatal(err)
			}
			taskID, _ := tok.Extra("task_id").(string)
			if tok.Type() != "Bearer" || taskID == "" || tok.Extra("scope") != "template:support tickets.read" {
				t.Fatalf("token %+v, task %q", tok, taskID)
			}
			if in := m.introspect(tok.AccessToken); in["active"] != true || in["sub"] != tc.agent || !audIs(in["aud"], m.resource) {
				t.Errorf("introspection %v", in)
			}
			client := oauth2.NewClient(context.Background(), oauth2.StaticTokenSource(tok))
			checkTaskTokenAtMCP(t, m, client, taskID)
			if r := m.do(http.MethodPost, "/v1/tasks/"+taskID+"/complete", tok.AccessToken, "", nil, false); r.Status != http.StatusOK {
				t.Fatalf("complete: %d %s", r.Status, r.Body)
			}
			status, challenge, _ := readTicket(t, client, m.resource)
			if status != http.StatusUnauthorized || !strings.Contains(challenge, `resource_metadata="`+m.url+`/.well-known/oauth-protected-resource/mcp"`) {
				t.Errorf("after the task was completed: %d %q", status, challenge)
			}
		})
	}
	// The workload token posted again is a replay (RFC 7523 section 3).
	before := m.ledger.writes.Load()
	if _, err := generic.Token(octx); !isOAuthError(err, oauth.ErrInvalidGrant) {
		t.Errorf("replayed workload assertion: %v", err)
	}
	if n := m.ledger.writes.Load() - before; n != 0 {
		t.Errorf("%d ledger writes", n)
	}
}

// audIs reports whether an introspected aud is exactly want (a string, or
// an array holding only want).
func audIs(aud any, want string) bool {
	switch a := aud.(type) {
	case string:
		return a == want
	case []any:
		return len(a) == 1 && a[0] == want
	}
	return false
}

// TestXOAuth2AuthStyleAutoDetect: clientcredentials left at its default
// AuthStyle sends the client id in HTTP Basic with an empty secret, beside
// the private_key_jwt assertion. Valet authenticates by the assertion
// alone, so the default configuration works too, once.
func TestXOAuth2AuthStyleAutoDetect(t *testing.T) {
	m := newMCPEnv(t, envOptions{})
	octx := context.WithValue(context.Background(), oauth2.HTTPClient, m.client)
	cfg := m.tokenConfig(t, "template:support", "tickets.read")
	cfg.AuthStyle = oauth2.AuthStyleAutoDetect
	tok, err := cfg.Token(octx)
	if err != nil {
		t.Fatal(err)
	}
	taskID, _ := tok.Extra("task_id").(string)
	checkTaskTokenAtMCP(t, m, oauth2.NewClient(context.Background(), oauth2.StaticTokenSource(tok)), taskID)
}
