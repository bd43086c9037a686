package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// mcpTSDir holds the TypeScript interop client (package-lock.json pins
// @modelcontextprotocol/sdk).
const mcpTSDir = "mcpts"

// npmInstall installs mcpts's pinned dependencies unless they are there.
func npmInstall(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the TypeScript MCP SDK interop test needs %s (Debian packages nodejs and npm): %v", tool, err)
		}
	}
	if _, err := os.Stat(filepath.Join(mcpTSDir, "node_modules", "@modelcontextprotocol", "sdk", "package.json")); err == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund")
	cmd.Dir = mcpTSDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in e2e/%s: %v\n%s", mcpTSDir, err, out)
	}
}

// TestMCPInteropTypeScriptSDK: the official TypeScript MCP SDK's client
// starts from the MCP server's URL alone: it follows the 401 challenge to
// the RFC 9728 metadata and Valet's RFC 8414 metadata, gets a task token
// from the token endpoint, lists and calls tools: a granted tool works, a
// tool outside the task is 403, and once the agent is frozen its next call
// fails. Two grants: client credentials with a private_key_jwt assertion
// (the SDK's PrivateKeyJwtProvider and fetchToken; its auth() needs an
// authorization_endpoint Valet does not serve), and jwt-bearer with a
// workload identity token (a provider on the SDK's OAuthClientProvider).
func TestMCPInteropTypeScriptSDK(t *testing.T) {
	npmInstall(t)
	t.Run("client_credentials", func(t *testing.T) {
		m := newMCPEnv(t, envOptions{incident: true})
		jwk, err := jose.JSONWebKey{Key: m.key, KeyID: "support-1", Algorithm: "EdDSA"}.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		runMCPTS(t, m, "support-agent", "CLIENT_ID=support-agent", "CLIENT_JWK="+string(jwk))
	})
	t.Run("jwt_bearer", func(t *testing.T) {
		m := newMCPEnv(t, envOptions{incident: true})
		runMCPTS(t, m, "agent-7", "WORKLOAD_TOKEN="+m.identity("agent-7"))
	})
}

// runMCPTS runs e2e/mcpts/interop.mjs as agent with the grant's
// environment and checks each step it reports.
func runMCPTS(t *testing.T, m *mcpEnv, agent string, grantEnv ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "interop.mjs")
	cmd.Dir = mcpTSDir
	cmd.Env = append(append(os.Environ(), "MCP_URL="+m.resource, "VALET_URL="+m.srv.URL, "SCOPE=template:support tickets.read"), grantEnv...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("node stderr:\n%s", stderr.String())
		}
	}()
	lines := bufio.NewScanner(stdout)
	lines.Buffer(make([]byte, 64<<10), 1<<20)
	next := func(want string) map[string]any {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("node ended before step %q: %v", want, lines.Err())
		}
		var step map[string]any
		if err := json.Unmarshal(lines.Bytes(), &step); err != nil {
			t.Fatalf("node said %q: %v", lines.Text(), err)
		}
		if step["step"] != want {
			t.Fatalf("step %q, want %q: %v", step["step"], want, step)
		}
		return step
	}

	if c := next("challenge"); c["status"] != float64(http.StatusUnauthorized) || c["resource_metadata"] != m.url+"/.well-known/oauth-protected-resource/mcp" {
		t.Errorf("challenge: %v", c)
	}
	if d := next("discovered"); d["resource"] != m.resource || d["issuer"] != m.srv.URL || d["token_endpoint"] != m.srv.URL+"/v1/token" {
		t.Errorf("discovered: %v", d)
	}
	connected := next("connected")
	if connected["task_id"] == nil || connected["token_type"] != "Bearer" || connected["scope"] != "template:support tickets.read" {
		t.Errorf("connected: %v", connected)
	}
	if names, _ := next("tools")["names"].([]any); len(names) != 3 || names[0] != "tickets.comment" || names[2] != "tickets.read" {
		t.Errorf("tools/list: %v", names)
	}
	granted := next("granted")
	content, _ := granted["content"].(map[string]any)
	if granted["ok"] != true || content["read_by"] != agent || content["task_id"] != connected["task_id"] {
		t.Errorf("granted tool: %v", granted)
	}
	if u := next("ungranted"); u["ok"] != false || u["code"] != float64(http.StatusForbidden) {
		t.Errorf("tool outside the task: %v", u)
	}

	// Freeze the agent: its task token stops working and Valet issues no
	// new one.
	before := m.ledger.writes.Load()
	rita := m.adminToken("rita", "valet-responders")
	if r := m.adminDo(http.MethodPost, "/v1/admin/controls", rita, `{"kind":"freeze_agent","target":"`+agent+`","reason":"leaked"}`); r.Status != http.StatusCreated {
		t.Fatalf("freeze: %d %s", r.Status, r.Body)
	}
	m.inc.controls.Reload(context.Background())
	if _, err := io.WriteString(stdin, "next\n"); err != nil {
		t.Fatal(err)
	}
	if after := next("after"); after["ok"] != false {
		t.Errorf("call after the freeze: %v", after)
	}
	if n := m.ledger.writes.Load() - before; n != 0 {
		t.Errorf("%d ledger writes after the freeze (a new task for a frozen agent?)", n)
	}
}
