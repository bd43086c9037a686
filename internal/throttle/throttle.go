// Package throttle counts failed attempts per key (a client id) in fixed
// windows and says how long a key must wait: the brake on guessing a
// client secret.
package throttle

import (
	"container/list"
	"crypto/sha256"
	"sync"
	"time"
)

// Limits of the throttle (docs/security.md lists them).
const (
	// FailuresPerWindow is how many failed attempts one key may make per
	// Window before every attempt with that key (also a correct one, else
	// the throttle would be an oracle) must wait until the window ends.
	FailuresPerWindow = 10
	Window            = time.Minute
	// maxUnknown bounds the memory kept for keys that are not configured
	// (an attacker chooses them): least recently used first out. Known
	// keys have their own entries, which no flood evicts.
	maxUnknown = 4096
)

// Throttle counts failed attempts per key in fixed windows. Keys are held
// by their SHA-256, so a long key costs no more memory than a short one.
// It is safe for concurrent use.
type Throttle struct {
	mu      sync.Mutex
	known   map[[32]byte]*entry
	unknown map[[32]byte]*list.Element // of *entry
	lru     *list.List
}

type entry struct {
	key   [32]byte
	start time.Time // of the current window
	fails int
}

// New keeps a fixed entry for each known key (a configured client id, with
// its realm): a flood of unknown keys never evicts their counts.
func New(known []string) *Throttle {
	t := &Throttle{known: map[[32]byte]*entry{}, unknown: map[[32]byte]*list.Element{}, lru: list.New()}
	for _, k := range known {
		key := sha256.Sum256([]byte(k))
		t.known[key] = &entry{key: key}
	}
	return t
}

// entry returns key's entry, creating an unknown one (evicting the least
// recently used past the cap) when create is set.
func (t *Throttle) entry(key [32]byte, create bool) *entry {
	if e, ok := t.known[key]; ok {
		return e
	}
	if el, ok := t.unknown[key]; ok {
		t.lru.MoveToFront(el)
		return el.Value.(*entry)
	}
	if !create {
		return nil
	}
	if t.lru.Len() >= maxUnknown {
		old := t.lru.Back()
		t.lru.Remove(old)
		delete(t.unknown, old.Value.(*entry).key)
	}
	e := &entry{key: key}
	t.unknown[key] = t.lru.PushFront(e)
	return e
}

// Wait says how long key must wait before its next attempt, or 0.
func (t *Throttle) Wait(key string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(sha256.Sum256([]byte(key)), false)
	if e == nil || e.fails < FailuresPerWindow {
		return 0
	}
	if end := e.start.Add(Window); now.Before(end) {
		return end.Sub(now)
	}
	return 0
}

// Fail records a failed attempt by key at now.
func (t *Throttle) Fail(key string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(sha256.Sum256([]byte(key)), true)
	if e.start.IsZero() || !now.Before(e.start.Add(Window)) {
		e.start, e.fails = now, 0
	}
	e.fails++
}

// Succeed forgets key's failures.
func (t *Throttle) Succeed(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.entry(sha256.Sum256([]byte(key)), false); e != nil {
		e.start, e.fails = time.Time{}, 0
	}
}
