package broker

import (
	"container/list"
	"crypto/sha256"
	"fmt"
	"sync"
	"time"
)

// Limits of the client-secret throttle (docs/security.md lists them).
const (
	// SecretFailuresPerWindow is how many failed client-secret attempts
	// one client id may make per SecretFailureWindow before every attempt
	// with that id (also a correct one, else the throttle would be an
	// oracle) answers 429 until the window ends.
	SecretFailuresPerWindow = 10
	SecretFailureWindow     = time.Minute
	// maxUnknownClientIDs bounds the memory kept for client ids that are
	// not configured (an attacker chooses them): least recently used first
	// out. Configured ids have their own entries, which no flood evicts.
	maxUnknownClientIDs = 4096
)

// SecretThrottle counts failed client-secret attempts per client id in
// fixed windows. Client ids are keyed by their SHA-256, so a long id costs
// no more memory than a short one. It is safe for concurrent use.
type SecretThrottle struct {
	mu      sync.Mutex
	known   map[[32]byte]*throttleEntry
	unknown map[[32]byte]*list.Element // of *throttleEntry
	lru     *list.List
}

type throttleEntry struct {
	key   [32]byte
	start time.Time // of the current window
	fails int
}

// NewSecretThrottle keeps a fixed entry for each configured id (realm:id):
// a flood of unknown ids never evicts their counts.
func NewSecretThrottle(known []string) *SecretThrottle {
	t := &SecretThrottle{known: map[[32]byte]*throttleEntry{}, unknown: map[[32]byte]*list.Element{}, lru: list.New()}
	for _, k := range known {
		key := sha256.Sum256([]byte(k))
		t.known[key] = &throttleEntry{key: key}
	}
	return t
}

// entry returns id's entry, creating an unknown one (evicting the least
// recently used past the cap) when create is set.
func (t *SecretThrottle) entry(key [32]byte, create bool) *throttleEntry {
	if e, ok := t.known[key]; ok {
		return e
	}
	if el, ok := t.unknown[key]; ok {
		t.lru.MoveToFront(el)
		return el.Value.(*throttleEntry)
	}
	if !create {
		return nil
	}
	if t.lru.Len() >= maxUnknownClientIDs {
		old := t.lru.Back()
		t.lru.Remove(old)
		delete(t.unknown, old.Value.(*throttleEntry).key)
	}
	e := &throttleEntry{key: key}
	t.unknown[key] = t.lru.PushFront(e)
	return e
}

// Wait says how long id must wait before its next attempt, or 0.
func (t *SecretThrottle) Wait(id string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(sha256.Sum256([]byte(id)), false)
	if e == nil || e.fails < SecretFailuresPerWindow {
		return 0
	}
	if end := e.start.Add(SecretFailureWindow); now.Before(end) {
		return end.Sub(now)
	}
	return 0
}

// Fail records a failed attempt by id at now.
func (t *SecretThrottle) Fail(id string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(sha256.Sum256([]byte(id)), true)
	if e.start.IsZero() || !now.Before(e.start.Add(SecretFailureWindow)) {
		e.start, e.fails = now, 0
	}
	e.fails++
}

// Succeed forgets id's failures.
func (t *SecretThrottle) Succeed(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.entry(sha256.Sum256([]byte(id)), false); e != nil {
		e.start, e.fails = time.Time{}, 0
	}
}

// Throttled is the 429 answer; it names no client id.
func Throttled(wait time.Duration) *Error {
	return &Error{Code: CodeTooManyRequests, RetryAfter: wait,
		Message: fmt.Sprintf("too many failed client authentications; retry after %d s", int((wait+time.Second-1)/time.Second))}
}

// throttleIDs are the configured client ids, each with its realm. (The
// approver clients have a throttle of their own, in package stepup.)
func throttleIDs(cfg Config) []string {
	var ids []string
	for _, c := range cfg.Clients {
		ids = append(ids, "client:"+c.ID)
	}
	return ids
}
