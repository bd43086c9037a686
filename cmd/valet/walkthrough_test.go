package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
)

// readmeBlock returns the shell block that follows <!-- walkthrough:NAME -->
// in the README.
func readmeBlock(t *testing.T, name string) string {
	t.Helper()
	return docBlock(t, "README.md", name)
}

// docBlock returns the shell block that follows <!-- walkthrough:NAME -->
// in the file (a path from the repository root).
func docBlock(t *testing.T, file, name string) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("../..", file))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- walkthrough:" + regexp.QuoteMeta(name) + " -->\\s*```sh\\n(.*?)```")
	m := re.FindSubmatch(doc)
	if m == nil {
		t.Fatalf("%s has no walkthrough:%s block", file, name)
	}
	return string(m[1])
}

// lockedBuffer is an io.Writer the test can read while a server writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// startRun runs the valet command in the background until the test ends.
func startRun(t *testing.T, env map[string]string, args ...string) (stdout, stderr *lockedBuffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr = &lockedBuffer{}, &lockedBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"valet"}, args...), func(k string) string { return env[k] }, stdout, stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("valet %v exited %d: %s", args, code, stderr.String())
			}
		case <-time.After(15 * time.Second):
			t.Errorf("valet %v did not stop", args)
		}
	})
	return stdout, stderr
}

// waitFor polls until match finds something in out.
func waitFor(t *testing.T, out, errOut *lockedBuffer, match *regexp.Regexp) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if m := match.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %s in output:\n%s\n%s", match, out.String(), errOut.String())
	return ""
}

// runSteps pastes the README's steps into bash after vars, and checks what
// the README says the steps show.
func runSteps(t *testing.T, vars string) {
	t.Helper()
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found on PATH: install the Debian package %s", tool, tool)
		}
	}
	script := "set -euo pipefail\n" + vars + "\n" + readmeBlock(t, "steps")
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "TMPDIR="+cmd.Dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("walk-through failed: %v\n%s", err, out)
	}
	s := string(out)
	active := strings.Index(s, `"active": true`)
	inactive := strings.LastIndex(s, `"active": false`)
	for _, want := range []string{`"state": "active"`, `"tickets.read"`, `"rule": "tools"`, `tickets.delete`, `"completed"`} {
		if !strings.Contains(s, want) {
			t.Errorf("walk-through output lacks %s:\n%s", want, s)
		}
	}
	if active < 0 || inactive < active {
		t.Errorf("walk-through did not show the token active, then inactive:\n%s", s)
	}
}

func TestWalkthroughDev(t *testing.T) {
	addr := testkit.FreeAddr(t)
	out, errOut := startRun(t, nil, "dev", "--addr", addr, "--audit", filepath.Join(t.TempDir(), "audit.jsonl"))
	url := waitFor(t, out, errOut, regexp.MustCompile(`Valet development server on (http://\S+)`))
	vars := strings.ReplaceAll(readmeBlock(t, "dev-vars"), "http://127.0.0.1:8080", url)
	runSteps(t, vars)
}

// servedValet is a `valet serve` process (run in-process) with its own
// Redis, development issuer, key and template folder.
type servedValet struct {
	base, idpURL, templates, cfgPath string
	stderr                           *lockedBuffer
}

// startServe writes the README's example config, pointed at this test's
// Redis, issuer, key, ports and a copy of the example templates, and runs
// `valet serve` with it until the test ends.
func startServe(t *testing.T, secret string) *servedValet {
	t.Helper()
	return startServeAt(t, secret, redistest.Start(t).URL(), http.StatusOK)
}

// startServeAt is startServe with the Redis at redisURL, returning once
// /readyz answers ready.
func startServeAt(t *testing.T, secret, redisURL string, ready int) *servedValet {
	t.Helper()
	return startServeRedis(t, secret, "url: "+redisURL+"\n  prefix: valet", ready)
}

// startServeRedis is startServeAt with redisSection (indented by two
// spaces) as the body of the config's redis section, retention aside.
func startServeRedis(t *testing.T, secret, redisSection string, ready int) *servedValet {
	t.Helper()
	dir := t.TempDir()
	idpOut, idpErr := startRun(t, nil, "dev", "idp", "--addr", "127.0.0.1:0")
	idpURL := waitFor(t, idpOut, idpErr, regexp.MustCompile(`development issuer (http://\S+)`))

	key := filepath.Join(dir, "signing.pem")
	var keyOut bytes.Buffer
	if code := run(context.Background(), []string{"valet", "keys", "generate", "--out", key}, os.Getenv, &keyOut, &keyOut); code != 0 {
		t.Fatalf("keys generate: %s", keyOut.String())
	}
	templates := filepath.Join(dir, "templates")
	if err := os.Mkdir(templates, 0o700); err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile("../../examples/templates/dev.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, templates, "dev.yaml", string(example))

	cfg, err := os.ReadFile("../../examples/serve.yaml")
	if err != nil {
		t.Fatal(err)
	}
	addr := testkit.FreeAddr(t)
	c := strings.NewReplacer(
		"127.0.0.1:8080", addr,
		"http://127.0.0.1:8081", idpURL,
		"url: redis://127.0.0.1:6379/0\n  prefix: valet", redisSection,
		"/tmp/valet-demo/signing.pem", key,
		"/tmp/valet-demo/audit.jsonl", filepath.Join(dir, "audit.jsonl"),
		"paths: [templates]", "paths: ["+templates+"]",
	).Replace(string(cfg))
	cfgPath := writeFile(t, dir, "valet.yaml", c)
	_, errOut := startRun(t, map[string]string{"VALET_TOOL_SERVER_SECRET": secret}, "serve", "--config", cfgPath)
	v := &servedValet{base: "http://" + addr, idpURL: idpURL, templates: templates, cfgPath: cfgPath, stderr: errOut}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(v.base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == ready {
				return v
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("valet serve never answered /readyz %d: %v\n%s", ready, err, errOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWalkthroughServe(t *testing.T) {
	vars := readmeBlock(t, "serve-vars")
	secretFile := writeFile(t, t.TempDir(), "tool-server.secret", "walkthrough-test-"+rand.Text()+"\n")
	secret, _ := os.ReadFile(secretFile)
	v := startServe(t, strings.TrimSpace(string(secret)))
	vars = strings.NewReplacer("http://127.0.0.1:8080", v.base, "http://127.0.0.1:8081", v.idpURL,
		"/tmp/valet-demo/tool-server.secret", secretFile).Replace(vars)
	runSteps(t, vars)
	if !strings.Contains(v.stderr.String(), `"task granted"`) {
		t.Errorf("serve logged no grant:\n%s", v.stderr.String())
	}

	// The README's admin block: a bare `valet` is this test's binary.
	bin := filepath.Join(t.TempDir(), "valet")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	admin := strings.ReplaceAll(readmeBlock(t, "serve-admin"), "valet ", bin+" ")
	out, err := exec.Command("bash", "-euo", "pipefail", "-c", vars+"\n"+admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "TASK") || !strings.Contains(string(out), "tsk_") {
		t.Fatalf("README's admin block against valet serve: %v\n%s", err, out)
	}
}
