package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeTemplateTruncateThenWrite guards issue 9 #12 end to end with
// fsnotify: a template file truncated and then written again (as editors
// and config tools do), or moved away and back, made every declaration 403
// for about half a second ("templates reloaded []"). Now the watcher keeps
// the last good set through it.
func TestServeTemplateTruncateThenWrite(t *testing.T) {
	v := startServe(t, "reload-test-secret-0123456789")
	path := filepath.Join(v.templates, "dev.yaml")
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// declareFor declares for d (the watcher's debounce is 200 ms, so d
	// spans the moment it reloads what it saw) and counts refusals.
	refused := 0
	declareFor := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); {
			if s := v.declareStatus(t, "support-triage"); s != http.StatusCreated {
				refused++
				t.Logf("declaration answered %d", s)
			}
		}
	}
	declareFor(100 * time.Millisecond)
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	declareFor(600 * time.Millisecond)
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	declareFor(100 * time.Millisecond)

	away := filepath.Join(filepath.Dir(v.templates), "dev.yaml.away")
	if err := os.Rename(path, away); err != nil {
		t.Fatal(err)
	}
	declareFor(600 * time.Millisecond)
	if err := os.Rename(away, path); err != nil {
		t.Fatal(err)
	}
	declareFor(400 * time.Millisecond)
	if refused > 0 {
		t.Fatalf("%d declarations refused while a template file was rewritten or moved back\n%s", refused, v.stderr.String())
	}
	if !strings.Contains(v.stderr.String(), "template reload deferred") {
		t.Fatalf("the deferred reload is not logged:\n%s", v.stderr.String())
	}
}
