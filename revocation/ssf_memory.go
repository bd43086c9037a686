package revocation

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/ssf"
)

// MemorySSFStore is RedisSSFStore in memory, for `valet dev` and tests:
// one broker's streams, lost on restart. Safe for concurrent use.
type MemorySSFStore struct {
	now func() time.Time

	mu      sync.Mutex
	streams map[string]ssf.Stream
	queues  map[string][]ssf.Queued
	cursor  string
	owner   string
	until   time.Time
}

var _ ssf.Store = (*MemorySSFStore)(nil)

// NewMemorySSFStore returns an empty store reading the time from now
// (default time.Now) for its lease.
func NewMemorySSFStore(now func() time.Time) *MemorySSFStore {
	if now == nil {
		now = time.Now
	}
	return &MemorySSFStore{now: now, streams: map[string]ssf.Stream{}, queues: map[string][]ssf.Queued{}}
}

// PutStream implements ssf.Store.
func (m *MemorySSFStore) PutStream(_ context.Context, s ssf.Stream) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	s.Audience, s.EventsRequested, s.EventsDelivered = slices.Clone(s.Audience), slices.Clone(s.EventsRequested), slices.Clone(s.EventsDelivered)
	s.Excluded = slices.Clone(s.Excluded)
	m.streams[s.ID] = s
	return nil
}

// Stream implements ssf.Store.
func (m *MemorySSFStore) Stream(_ context.Context, id string) (ssf.Stream, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.streams[id]
	if !ok {
		return ssf.Stream{}, fmt.Errorf("ssf stream %q: %w", id, broker.ErrNotFound)
	}
	return s, nil
}

// Streams implements ssf.Store.
func (m *MemorySSFStore) Streams(context.Context) ([]ssf.Stream, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]ssf.Stream, 0, len(m.streams))
	for _, s := range m.streams {
		out = append(out, s)
	}
	return out, nil
}

// DeleteStream implements ssf.Store.
func (m *MemorySSFStore) DeleteStream(_ context.Context, id string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.streams[id]
	delete(m.streams, id)
	delete(m.queues, id)
	return ok, nil
}

// Enqueue implements ssf.Store.
func (m *MemorySSFStore) Enqueue(_ context.Context, id string, q ssf.Queued, max int) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	qs := m.queues[id]
	if slices.ContainsFunc(qs, func(x ssf.Queued) bool { return x.JTI == q.JTI }) {
		return true, nil
	}
	if len(qs) >= max {
		return false, nil
	}
	m.queues[id] = append(qs, q)
	return true, nil
}

// Pending implements ssf.Store.
func (m *MemorySSFStore) Pending(_ context.Context, id string, limit int) ([]ssf.Queued, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	qs := m.queues[id]
	return slices.Clone(qs[:min(max(limit, 0), len(qs))]), nil
}

// Ack implements ssf.Store.
func (m *MemorySSFStore) Ack(_ context.Context, id string, jtis []string) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	before := len(m.queues[id])
	m.queues[id] = slices.DeleteFunc(m.queues[id], func(q ssf.Queued) bool { return slices.Contains(jtis, q.JTI) })
	return before - len(m.queues[id]), nil
}

// Retry implements ssf.Store.
func (m *MemorySSFStore) Retry(_ context.Context, id string, q ssf.Queued) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, x := range m.queues[id] {
		if x.JTI == q.JTI {
			m.queues[id][i] = q
		}
	}
	return nil
}

// Cursor implements ssf.Store.
func (m *MemorySSFStore) Cursor(context.Context) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cursor, nil
}

// SetCursor implements ssf.Store.
func (m *MemorySSFStore) SetCursor(_ context.Context, c string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cursor = c
	return nil
}

// Lease implements ssf.Store.
func (m *MemorySSFStore) Lease(_ context.Context, owner string, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if m.owner != "" && m.owner != owner && now.Before(m.until) {
		return false, nil
	}
	m.owner, m.until = owner, now.Add(ttl)
	return true, nil
}
