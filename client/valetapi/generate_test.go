package valetapi

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedClientIsUpToDate runs the pinned oapi-codegen on the committed
// spec into a temporary file and compares it with valetapi.gen.go, so a spec
// change without `go generate ./client/valetapi` fails here. That the package
// compiles at all is checked by building this test.
func TestGeneratedClientIsUpToDate(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	config, err := os.ReadFile("oapi-codegen.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const outputLine = "output: ../../client/valetapi/valetapi.gen.go"
	if !bytes.Contains(config, []byte(outputLine)) {
		t.Fatalf("oapi-codegen.yaml has no line %q to redirect", outputLine)
	}
	tmp := t.TempDir()
	out := filepath.Join(tmp, "valetapi.gen.go")
	config = bytes.Replace(config, []byte(outputLine), []byte("output: "+out), 1)
	tmpConfig := filepath.Join(tmp, "oapi-codegen.yaml")
	if err := os.WriteFile(tmpConfig, config, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "run", "-C", filepath.Join(root, "tools", "oapi"),
		"github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen",
		"-config", tmpConfig, filepath.Join(root, "openapi", "openapi.yaml"))
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("running oapi-codegen: %v\n%s", err, msg)
	}
	want, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("valetapi.gen.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		gotLines, wantLines := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := range min(len(gotLines), len(wantLines)) {
			if gotLines[i] != wantLines[i] {
				t.Fatalf("valetapi.gen.go is stale (first difference at line %d: committed %q, generated %q): run go generate ./client/valetapi",
					i+1, gotLines[i], wantLines[i])
			}
		}
		t.Fatalf("valetapi.gen.go is stale (%d lines committed, %d generated): run go generate ./client/valetapi", len(gotLines), len(wantLines))
	}
}
