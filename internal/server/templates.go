package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/valet-dev/valet/policy"
)

// TemplateReload says where the template watcher reloads templates from.
type TemplateReload struct {
	// Paths are the template files and folders.
	Paths []string
	// Watch reloads when a file in their folders changes; without it only
	// SIGHUP reloads.
	Watch bool
	// Issuers are the names of the trusted agent issuers templates may
	// name.
	Issuers []string
}

// watchTemplates reloads templates on SIGHUP and, if r.Watch is set, when a
// file in their folders changes. A failed reload keeps the last good set.
func (s *Server) watchTemplates(ctx context.Context, r TemplateReload) {
	guard := &reloadGuard{settle: templateSettle, now: time.Now}
	reload := func() error {
		files, err := policy.ReadFiles(r.Paths)
		if err != nil {
			return fmt.Errorf("templates: %w", err)
		}
		set, err := policy.Load(files, r.Issuers)
		if err != nil {
			return fmt.Errorf("templates:\n%w", err)
		}
		if err := guard.check(s.svc.Templates(), set, files); err != nil {
			return err
		}
		s.svc.SetTemplates(set)
		s.log.Info("templates reloaded", "templates", set.Names())
		return nil
	}
	runWatcher(ctx, r.Paths, r.Watch, reload, s.log)
}

// runWatcher calls reload on SIGHUP and, with watch, 200 ms after the
// last change of a .yaml or .yml file in the folders of paths; a reload
// deferred by the guard is retried when it says.
func runWatcher(ctx context.Context, paths []string, watch bool, reload func() error, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var events <-chan fsnotify.Event
	if watch {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			log.Error("cannot watch template files; reload with SIGHUP", "err", err)
		} else {
			defer w.Close()
			for _, p := range paths {
				dir := p
				if st, err := os.Stat(p); err == nil && !st.IsDir() {
					dir = filepath.Dir(p)
				}
				if err := w.Add(dir); err != nil {
					log.Error("cannot watch template folder", "path", dir, "err", err)
				}
			}
			events = w.Events
		}
	}
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			debounce = time.After(0)
		case ev := <-events:
			if ext := filepath.Ext(ev.Name); ext == ".yaml" || ext == ".yml" {
				debounce = time.After(200 * time.Millisecond)
			}
		case <-debounce:
			debounce = nil
			err := reload()
			var unsettled *errUnsettled
			switch {
			case errors.As(err, &unsettled):
				log.Warn("template reload deferred; still serving the last good set", "reason", err.Error(), "retry_in", unsettled.retry)
				debounce = time.After(unsettled.retry)
			case err != nil:
				log.Error("template reload failed; still serving the last good set", "err", err)
			}
		}
	}
}

// templateSettle is how long template files must stay unchanged before a
// reload that removes templates is applied: an editor's truncate-then-write
// or a file moved away and back must not take templates away for a moment.
const templateSettle = time.Second

// reloadGuard keeps the last good template set through a reload that would
// take templates away while the files are still changing. Additions and
// changes apply at once. A reload that removes some templates (a file
// deleted, emptied, cut short mid-write) applies only once the files have
// read the same for the settle time; one that would remove every template
// never applies (an empty set makes every declaration 403). Not safe for
// concurrent use: the watcher calls it from one goroutine.
type reloadGuard struct {
	settle time.Duration
	now    func() time.Time

	pending [32]byte // hash of the files of a deferred removal
	since   time.Time
}

// errUnsettled defers a reload: retry after retry.
type errUnsettled struct {
	msg   string
	retry time.Duration
}

func (e *errUnsettled) Error() string { return e.msg }

func (g *reloadGuard) check(cur, next *policy.Set, files []policy.File) error {
	if len(next.Names()) == 0 && len(cur.Names()) > 0 {
		return fmt.Errorf("the template files hold no template (a file vanished, is empty or is being written); refusing to remove every template: %w",
			&errUnsettled{msg: "retrying", retry: g.settle})
	}
	var removed []string
	for _, n := range cur.Names() {
		if _, ok := next.Get(n); !ok {
			removed = append(removed, n)
		}
	}
	if len(removed) == 0 {
		g.since = time.Time{}
		return nil
	}
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%d\x00", f.Name, len(f.Data))
		h.Write(f.Data)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	now := g.now()
	if g.since.IsZero() || sum != g.pending {
		g.pending, g.since = sum, now
	}
	if wait := g.settle - now.Sub(g.since); wait > 0 {
		return &errUnsettled{msg: fmt.Sprintf("the reload would remove templates %v; applying it once the files have not changed for %v", removed, g.settle), retry: wait}
	}
	g.since = time.Time{}
	return nil
}
