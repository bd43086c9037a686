// Package typescript_test runs the TypeScript SDK's suite (node --test)
// against a real `valet dev` built from this checkout.
package typescript_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// run runs name with args in this folder, failing the test with its output.
func run(t *testing.T, ctx context.Context, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	if testing.Verbose() {
		t.Logf("%s %v:\n%s", name, args, out)
	}
}

// TestTypeScriptSDK installs the SDK's pinned dev dependencies (npm ci),
// generates the OpenAPI types, compiles the SDK and its tests with tsc and
// runs them with Node's test runner. The tests start `valet dev` from the
// binary built here (VALET_BIN): the agent client (declare, await using,
// renew, delegate, DPoP, action tokens and approvals, reports, typed
// errors), the verifier on the real revocation feed (0 calls to Valet per
// warm check, a revoked task refused within 1 s; with redis-server, an
// incident control through `valet dev --redis`), the verifier on the SSF
// stream of `valet dev --redis` (0 calls per warm check, an ended task and a
// frozen agent refused from the SETs, forged and replayed SETs changing
// nothing), the MCP adapter with the
// official MCP SDK, and the OpenAI Agents SDK example with a scripted model.
func TestTypeScriptSDK(t *testing.T) {
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("the TypeScript SDK suite needs %s (Debian packages nodejs and npm): %v", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if !installed(t) {
		run(t, ctx, nil, "npm", "ci", "--no-audit", "--no-fund")
	}
	bin := filepath.Join(t.TempDir(), "valet")
	run(t, ctx, nil, "go", "build", "-o", bin, "../../cmd/valet")
	run(t, ctx, nil, "npm", "run", "--silent", "build")
	run(t, ctx, nil, "npx", "--no-install", "tsc", "-p", "tsconfig.test.json")
	tests, err := filepath.Glob(filepath.Join("dist-test", "test", "*.test.js"))
	if err != nil || len(tests) == 0 {
		t.Fatalf("no compiled tests in dist-test (%v)", err)
	}
	run(t, ctx, []string{"VALET_BIN=" + bin}, "node", append([]string{"--test", "--test-concurrency=1", "--test-reporter=spec"}, tests...)...)
}

// installed reports whether node_modules holds every dev dependency of
// package.json at its pinned version (else npm ci runs).
func installed(t *testing.T) bool {
	t.Helper()
	var pkg struct {
		DevDependencies map[string]string `json:"devDependencies"`
	}
	b, err := os.ReadFile("package.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &pkg); err != nil {
		t.Fatalf("package.json: %v", err)
	}
	for name, version := range pkg.DevDependencies {
		var dep struct {
			Version string `json:"version"`
		}
		b, err := os.ReadFile(filepath.Join("node_modules", name, "package.json"))
		if err != nil || json.Unmarshal(b, &dep) != nil || dep.Version != version {
			return false
		}
	}
	return true
}
