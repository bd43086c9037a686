package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/examples/mcpserver"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/verify"
)

// tsHostTemplates: the interactive host ts-host may act for people of
// example.com at the example MCP server.
const tsHostTemplates = `
templates:
  - name: support
    principals:
      - issuer: clients
        condition: 'claims.sub == "ts-host"'
    users:
      - issuer: test
        condition: 'has(claims.email) && claims.email.endsWith("@example.com")'
    ttl: {default: 5m, max: 15m, max_lifetime: 1h}
    tools: [tickets.read, tickets.comment]
    audiences: [MCP/mcp]
`

// TestOAuthCodeTypeScriptSDK: the official TypeScript MCP SDK's own auth()
// runs the authorization code + PKCE flow against Valet, from the MCP
// server's URL alone (e2e/mcpts/authcode.mjs): S256, state, resource; a
// scripted browser signs the person in upstream and consents; the code
// gives a token with sub the person and act the host; a granted tool
// works, another does not; the refresh token renews the same task and
// rotates.
func TestOAuthCodeTypeScriptSDK(t *testing.T) {
	npmInstall(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mcpURL := "http://" + ln.Addr().String()
	resource := mcpURL + mcpserver.Path
	idp := oidctest.New(t)
	up := newTestUpstream(t, idp)
	redirect := "http://127.0.0.1:9/ts-callback"
	e := newEnv(t, envOptions{idp: idp, templates: strings.ReplaceAll(tsHostTemplates, "MCP", mcpURL),
		oauthInteractive: &oauth.InteractiveConfig{Upstream: up, Store: revocation.NewMemoryOAuthStore(nil),
			Clients: []oauth.PublicClient{{ID: "ts-host", RedirectURIs: []string{redirect}, Templates: []string{"support"}}}}})
	up.now, up.callback = e.clock.Now, e.srv.URL+oauth.CallbackPath
	ver, err := verify.New(verify.Config{Issuer: e.srv.URL, Audience: resource, ClientID: clientID, ClientSecret: clientSecret,
		Now: e.clock.Now, PublicURL: mcpURL, Scopes: []string{"template:support", "tickets.read", "tickets.comment"}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := mcpserver.New(ver)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "authcode.mjs")
	cmd.Dir = mcpTSDir
	cmd.Env = append(os.Environ(), "MCP_URL="+resource, "CLIENT_ID=ts-host", "REDIRECT_URL="+redirect, "SCOPE=template:support tickets.read")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	steps := map[string]map[string]any{}
	var out strings.Builder
	lines := bufio.NewScanner(stdout)
	for lines.Scan() {
		out.WriteString(lines.Text() + "\n")
		var step map[string]any
		if err := json.Unmarshal(lines.Bytes(), &step); err != nil {
			t.Fatalf("node said %q: %v", lines.Text(), err)
		}
		name, _ := step["step"].(string)
		steps[name] = step
		if name == "ungranted" {
			e.clock.Advance(2 * time.Minute)
			_, _ = io.WriteString(stdin, "next\n")
		}
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Logf("node: %v; stderr:\n%s", err, stderr.String())
	}
	if f, ok := steps["failed"]; ok {
		t.Fatalf("the SDK client failed: %v\nstderr: %s", f["error"], stderr.String())
	}
	check := func(step string, want map[string]any) {
		t.Helper()
		got, ok := steps[step]
		if !ok {
			t.Fatalf("no step %q in %s", step, out.String())
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s.%s = %v, want %v (%v)", step, k, got[k], v, got)
			}
		}
	}
	check("redirect", map[string]any{"result": "REDIRECT", "authorization_endpoint": e.srv.URL + oauth.AuthorizePath, "method": "S256",
		"has_state": true, "resource": resource})
	check("callback", map[string]any{"consented": true, "has_code": true, "state_ok": true, "iss": e.srv.URL})
	check("tokens", map[string]any{"result": "AUTHORIZED", "sub": "alice", "act": "ts-host", "has_refresh": true, "scope": "template:support tickets.read"})
	check("granted", map[string]any{"ok": true})
	check("ungranted", map[string]any{"ok": false})
	check("refreshed", map[string]any{"result": "AUTHORIZED", "rotated": true, "same_task": true})
}
