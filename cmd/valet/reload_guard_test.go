package main

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// TestReloadGuard: which reloads the guard defers (issue 9 #12), on an
// injected clock.
func TestReloadGuard(t *testing.T) {
	load := func(t *testing.T, files ...broker.TemplateFile) *broker.TemplateSet {
		t.Helper()
		set, err := broker.LoadTemplates(files, []string{"dev"})
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	a := broker.TemplateFile{Name: "a.yaml", Data: []byte(extraTemplate)}
	b := broker.TemplateFile{Name: "b.yaml", Data: []byte(strings.Replace(extraTemplate, "name: extra", "name: other", 1))}
	empty := broker.TemplateFile{Name: "b.yaml"}
	both, onlyA := load(t, a, b), load(t, a, empty)
	none := load(t, broker.TemplateFile{Name: "a.yaml"})

	now := time.Unix(1000, 0)
	g := &reloadGuard{settle: time.Second, now: func() time.Time { return now }}
	deferred := func(err error) bool { var u *errUnsettled; return errors.As(err, &u) }

	if err := g.check(both, none, []broker.TemplateFile{{Name: "a.yaml"}}); !deferred(err) {
		t.Fatalf("a reload removing every template: %v, want deferred", err)
	}
	now = now.Add(time.Hour)
	if err := g.check(both, none, []broker.TemplateFile{{Name: "a.yaml"}}); !deferred(err) {
		t.Fatalf("a reload removing every template, an hour on: %v, want still refused", err)
	}
	if err := g.check(onlyA, both, []broker.TemplateFile{a, b}); err != nil {
		t.Fatalf("an addition: %v, want applied at once", err)
	}
	if err := g.check(both, onlyA, []broker.TemplateFile{a, empty}); !deferred(err) {
		t.Fatalf("a file emptied: %v, want deferred", err)
	}
	now = now.Add(500 * time.Millisecond)
	half := broker.TemplateFile{Name: "b.yaml", Data: []byte("templates:\n")}
	if err := g.check(both, onlyA, []broker.TemplateFile{a, half}); !deferred(err) {
		t.Fatalf("files still changing: %v, want deferred", err)
	}
	now = now.Add(999 * time.Millisecond)
	if err := g.check(both, onlyA, []broker.TemplateFile{a, half}); !deferred(err) {
		t.Fatalf("unchanged for less than the settle time: %v, want deferred", err)
	}
	now = now.Add(time.Millisecond)
	if err := g.check(both, onlyA, []broker.TemplateFile{a, half}); err != nil {
		t.Fatalf("unchanged for the settle time: %v, want the removal applied", err)
	}
}

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
