package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/valet-dev/valet/examples/toolserver"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/verify"
)

// TestWalkthroughAgentControls runs docs/agent-controls.md's walk-through
// as it is written: step 1's shell in a fresh folder and its `valet dev`
// line (with its own flags, on free ports and a private Redis), step 2's
// example tool server (in this process, as its main does), then steps 3
// to 6 pasted into bash with a bare `valet` that is this package built.
func TestWalkthroughAgentControls(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found on PATH: install the Debian package %s", tool, tool)
		}
	}
	block := docBlock(t, "docs/agent-controls.md", "agent-controls")
	step2, step3 := strings.Index(block, "\n# 2. "), strings.Index(block, "\n# 3. ")
	if step2 < 0 || step3 < step2 {
		t.Fatalf("the walk-through has no steps 2 and 3:\n%s", block)
	}
	step1 := block[:step2]
	devAt := strings.Index(step1, "\nvalet dev ")
	if devAt < 0 {
		t.Fatalf("step 1 does not start `valet dev`:\n%s", step1)
	}
	devLine := strings.TrimSpace(step1[devAt:])
	for _, want := range []string{"--redis", "--templates ./my-templates"} {
		if !strings.Contains(devLine, want) {
			t.Errorf("step 1's `%s` lacks %s", devLine, want)
		}
	}

	dir := t.TempDir()
	prepare := exec.Command("bash", "-euo", "pipefail", "-c", step1[:devAt])
	prepare.Dir = dir
	if out, err := prepare.CombinedOutput(); err != nil {
		t.Fatalf("step 1 before `valet dev`: %v\n%s", err, out)
	}
	rd := redistest.Start(t)
	valetAddr, toolAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	devArgs := strings.Fields(strings.NewReplacer("127.0.0.1:8080", valetAddr, "redis://127.0.0.1:6379/0", rd.URL(),
		"./my-templates", filepath.Join(dir, "my-templates")).Replace(devLine))[1:]
	devArgs = append(devArgs, "--rollback-hosts", toolAddr, "--audit", filepath.Join(dir, "audit.jsonl"))
	out, errOut := startRun(t, nil, devArgs...)
	base := waitFor(t, out, errOut, regexp.MustCompile(`Valet development server on (http://\S+)`))

	// Step 2: the example tool server, as examples/toolserver/cmd/toolserver runs it.
	if !strings.Contains(block[step2:step3], "--audience https://tools.example.com") {
		t.Fatalf("step 2 changed; this test starts the tool server as it was:\n%s", block[step2:step3])
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	v, err := verify.New(verify.Config{Issuer: base, Audience: "https://tools.example.com", ClientID: "tool-server",
		ClientSecret: "dev-secret-not-for-production", PublicURL: "http://" + toolAddr})
	if err != nil {
		t.Fatal(err)
	}
	go v.Run(ctx)
	ln, err := net.Listen("tcp", toolAddr)
	if err != nil {
		t.Fatal(err)
	}
	ts := &http.Server{Handler: toolserver.New(v)}
	go ts.Serve(ln)
	t.Cleanup(func() { ts.Close() })

	bin := filepath.Join(t.TempDir(), "valet")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	rest := strings.NewReplacer("127.0.0.1:8080", valetAddr, "127.0.0.1:9090", toolAddr).Replace(block[step3:])
	rest = regexp.MustCompile(`(^|[\s(])valet `).ReplaceAllString(rest, "${1}"+bin+" ")
	steps := exec.Command("bash", "-euo", "pipefail", "-c", rest)
	steps.Dir = dir
	steps.Env = os.Environ()
	got, err := steps.CombinedOutput()
	if err != nil {
		t.Fatalf("steps 3 to 6: %v\n%s", err, got)
	}
	s := string(got)
	for _, want := range []string{`"read_by":"agent-a"`, "200\n403\n", `{"id":"c_`, "tool.called", "tickets.comment added comment",
		"dry run: 1 undo steps, none called", ": done (DELETE ", "rollback of tsk_", "\nnull\n", "401\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("the walk-through's output lacks %q:\n%s", want, s)
		}
	}
}
