package openapi

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestTypeScriptClientCompiles generates TypeScript types from openapi.yaml
// with the openapi-typescript pinned in ts-check/package-lock.json and
// compiles them, with a file using them, by the pinned tsc.
func TestTypeScriptClientCompiles(t *testing.T) {
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not found: install the Debian packages nodejs and npm to check the TypeScript client (.ci/run does)", tool)
		}
	}
	dir, err := filepath.Abs("ts-check")
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		t.Helper()
		cmd := exec.Command("npm", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "NO_COLOR=1", "npm_config_update_notifier=false")
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("npm %v in %s: %v\n%s", args, dir, err, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", ".bin", "tsc")); err != nil {
		run("ci", "--no-audit", "--no-fund")
	}
	run("run", "check")
}
