package server

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/policy"
)

const extraTemplate = `
templates:
  - name: extra
    description: Added while serving.
    principals: [{issuer: dev}]
    ttl: {default: 1m, max: 2m}
    tools: [tickets.read]
    audiences: [https://tools.example.com]
`

// TestReloadGuard: which reloads the guard defers (issue 9 #12), on an
// injected clock.
func TestReloadGuard(t *testing.T) {
	load := func(t *testing.T, files ...policy.File) *policy.Set {
		t.Helper()
		set, err := policy.Load(files, []string{"dev"})
		if err != nil {
			t.Fatal(err)
		}
		return set
	}
	a := policy.File{Name: "a.yaml", Data: []byte(extraTemplate)}
	b := policy.File{Name: "b.yaml", Data: []byte(strings.Replace(extraTemplate, "name: extra", "name: other", 1))}
	empty := policy.File{Name: "b.yaml"}
	both, onlyA := load(t, a, b), load(t, a, empty)
	none := load(t, policy.File{Name: "a.yaml"})

	clock := testkit.NewClock(time.Unix(1000, 0))
	g := &reloadGuard{settle: time.Second, now: clock.Now}
	deferred := func(err error) bool { var u *errUnsettled; return errors.As(err, &u) }

	if err := g.check(both, none, []policy.File{{Name: "a.yaml"}}); !deferred(err) {
		t.Fatalf("a reload removing every template: %v, want deferred", err)
	}
	clock.Advance(time.Hour)
	if err := g.check(both, none, []policy.File{{Name: "a.yaml"}}); !deferred(err) {
		t.Fatalf("a reload removing every template, an hour on: %v, want still refused", err)
	}
	if err := g.check(onlyA, both, []policy.File{a, b}); err != nil {
		t.Fatalf("an addition: %v, want applied at once", err)
	}
	if err := g.check(both, onlyA, []policy.File{a, empty}); !deferred(err) {
		t.Fatalf("a file emptied: %v, want deferred", err)
	}
	clock.Advance(500 * time.Millisecond)
	half := policy.File{Name: "b.yaml", Data: []byte("templates:\n")}
	if err := g.check(both, onlyA, []policy.File{a, half}); !deferred(err) {
		t.Fatalf("files still changing: %v, want deferred", err)
	}
	clock.Advance(999 * time.Millisecond)
	if err := g.check(both, onlyA, []policy.File{a, half}); !deferred(err) {
		t.Fatalf("unchanged for less than the settle time: %v, want deferred", err)
	}
	clock.Advance(time.Millisecond)
	if err := g.check(both, onlyA, []policy.File{a, half}); err != nil {
		t.Fatalf("unchanged for the settle time: %v, want the removal applied", err)
	}
}
