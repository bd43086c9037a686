// Package python runs the Python SDK's unittest suite (sdk/python/tests)
// against a real `valet dev` built from this checkout.
package python

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pythonWithCryptography finds a Python 3 that can import cryptography:
// $VALET_PYTHON, python3 on PATH, then /usr/bin/python3 (Debian's, with the
// python3-cryptography package).
func pythonWithCryptography(t *testing.T) string {
	t.Helper()
	var candidates []string
	if p := os.Getenv("VALET_PYTHON"); p != "" {
		candidates = append(candidates, p)
	}
	if p, err := exec.LookPath("python3"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/python3")
	var tried []string
	for _, p := range candidates {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, p, "-c", "import sys, cryptography; assert sys.version_info >= (3, 9)").CombinedOutput()
		cancel()
		if err == nil {
			return p
		}
		tried = append(tried, p+": "+strings.TrimSpace(lastLine(string(out)))+" "+err.Error())
	}
	t.Skipf("the Python SDK tests need Python 3.9+ with cryptography (Debian package python3-cryptography); tried:\n%s",
		strings.Join(tried, "\n"))
	return ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestPythonSDK builds valet and runs `python3 -m unittest` in sdk/python:
// the agent client, the verifier on the real revocation feed (a revoked
// task refused within 1 s, 0 calls to Valet per warm check), the verifier on
// the SSF stream of `valet dev --redis` (tests/test_ssf.py) and the example
// agent loop, each against a `valet dev` the Python tests start.
func TestPythonSDK(t *testing.T) {
	py := pythonWithCryptography(t)
	if _, err := exec.LookPath("go"); err != nil {
		t.Skipf("building valet needs go on PATH: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "valet")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/valet")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/valet: %v\n%s", err, out)
	}
	run := exec.CommandContext(ctx, py, "-m", "unittest", "discover", "-s", "tests", "-t", ".", "-v")
	run.Env = append(os.Environ(), "VALET_BIN="+bin, "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1")
	out, err := run.CombinedOutput()
	t.Logf("%s -m unittest (sdk/python):\n%s", py, out)
	if err != nil {
		t.Fatalf("the Python SDK suite failed: %v", err)
	}
	if !strings.Contains(string(out), "\nOK") {
		t.Fatalf("the Python SDK suite did not report OK")
	}
}

// TestPythonSDKTypes checks the package's annotations (it ships py.typed)
// with mypy --strict, where some Python on the machine has mypy (Debian
// package python3-mypy).
func TestPythonSDKTypes(t *testing.T) {
	for _, py := range []string{os.Getenv("VALET_PYTHON"), "python3", "/usr/bin/python3"} {
		if py == "" {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		if exec.CommandContext(ctx, py, "-m", "mypy", "--version").Run() != nil {
			cancel()
			continue
		}
		out, err := exec.CommandContext(ctx, py, "-m", "mypy", "--strict", "--no-incremental", "valet").CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("mypy --strict valet:\n%s", out)
		}
		return
	}
	t.Skip("no Python with mypy (Debian package python3-mypy): the annotations are not checked")
}
