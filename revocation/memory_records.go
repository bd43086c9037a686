package revocation

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
)

var _ broker.Records = (*MemoryLedger)(nil)

// memRecords is the MemoryLedger's broker.Records, with expiry driven by
// the ledger's clock.
type memRecords struct {
	mu    sync.Mutex
	recs  map[string]memRec
	lists map[string]*memList
	holds map[string]map[string]time.Time
}

type memRec struct {
	b     []byte
	until time.Time
}

type memList struct {
	items [][]byte
	until time.Time
}

func (l *MemoryLedger) records() *memRecords {
	l.recsOnce.Do(func() {
		l.recs = &memRecords{recs: map[string]memRec{}, lists: map[string]*memList{}, holds: map[string]map[string]time.Time{}}
	})
	return l.recs
}

func recKey(kind, id string) string { return kind + "\x00" + id }

// Put implements broker.Records.
func (l *MemoryLedger) Put(_ context.Context, kind, id string, rec []byte, until time.Time) error {
	r, now := l.records(), l.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !until.After(now) {
		return fmt.Errorf("putting %s %s: expiry has passed", kind, id)
	}
	if cur, ok := r.recs[recKey(kind, id)]; ok && now.Before(cur.until) {
		return fmt.Errorf("putting %s %s: %w", kind, id, broker.ErrExists)
	}
	for k, v := range r.recs { // sweep: the dev ledger is small
		if !now.Before(v.until) {
			delete(r.recs, k)
		}
	}
	r.recs[recKey(kind, id)] = memRec{b: bytes.Clone(rec), until: until}
	return nil
}

// Get implements broker.Records.
func (l *MemoryLedger) Get(_ context.Context, kind, id string) ([]byte, error) {
	r, now := l.records(), l.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, ok := r.recs[recKey(kind, id)]
	if !ok || !now.Before(cur.until) {
		return nil, fmt.Errorf("reading %s %s: %w", kind, id, broker.ErrNotFound)
	}
	return bytes.Clone(cur.b), nil
}

// Swap implements broker.Records.
func (l *MemoryLedger) Swap(_ context.Context, kind, id string, old, next []byte) error {
	r, now := l.records(), l.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, ok := r.recs[recKey(kind, id)]
	switch {
	case !ok || !now.Before(cur.until):
		return fmt.Errorf("swapping %s %s: %w", kind, id, broker.ErrNotFound)
	case !bytes.Equal(cur.b, old):
		return fmt.Errorf("swapping %s %s: %w", kind, id, broker.ErrNotActive)
	}
	r.recs[recKey(kind, id)] = memRec{b: bytes.Clone(next), until: cur.until}
	return nil
}

// List implements broker.Records.
func (l *MemoryLedger) List(_ context.Context, kind string, limit int) ([][]byte, error) {
	r, now := l.records(), l.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out [][]byte
	for k, v := range r.recs {
		if len(out) < limit && now.Before(v.until) && len(k) > len(kind) && k[:len(kind)+1] == kind+"\x00" {
			out = append(out, bytes.Clone(v.b))
		}
	}
	return out, nil
}

// Append implements broker.Records.
func (l *MemoryLedger) Append(_ context.Context, kind, id string, rec []byte, until time.Time, max int) error {
	r, now := l.records(), l.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	ls, ok := r.lists[recKey(kind, id)]
	if !ok || !now.Before(ls.until) {
		ls = &memList{}
		r.lists[recKey(kind, id)] = ls
	}
	if len(ls.items) >= max {
		return fmt.Errorf("appending to %s %s: list is full: %w", kind, id, broker.ErrExists)
	}
	ls.items = append(ls.items, bytes.Clone(rec))
	ls.until = later(ls.until, until)
	return nil
}

// Hold implements broker.Records.
func (l *MemoryLedger) Hold(_ context.Context, kind, id, member string, until time.Time, max int) error {
	r, now := l.records(), l.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	set := r.holds[recKey(kind, id)]
	if set == nil {
		set = map[string]time.Time{}
		r.holds[recKey(kind, id)] = set
	}
	for m, t := range set {
		if !now.Before(t) {
			delete(set, m)
		}
	}
	if _, held := set[member]; !held && len(set) >= max {
		return fmt.Errorf("holding %s %s: %d places taken: %w", kind, id, max, broker.ErrExists)
	}
	set[member] = until
	return nil
}

// Release implements broker.Records.
func (l *MemoryLedger) Release(_ context.Context, kind, id, member string) error {
	r := l.records()
	r.mu.Lock()
	defer r.mu.Unlock()
	set := r.holds[recKey(kind, id)]
	delete(set, member)
	if len(set) == 0 {
		delete(r.holds, recKey(kind, id))
	}
	return nil
}

// Items implements broker.Records.
func (l *MemoryLedger) Items(_ context.Context, kind, id string, limit int) ([][]byte, error) {
	r, now := l.records(), l.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	ls, ok := r.lists[recKey(kind, id)]
	if !ok || !now.Before(ls.until) {
		return nil, nil
	}
	return slices.Clone(ls.items[:min(limit, len(ls.items))]), nil
}
