package revocation

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/oauth"
)

// MemoryOAuthStore is oauth.Store in memory, for one broker (dev mode and
// tests). Expiry follows the clock it was given. It holds at most
// MaxMemoryOAuthRecords live records: sign-ins are started by anyone, so
// past that a Put fails (the endpoint answers 503) rather than the
// process growing without bound. Safe for concurrent use.
type MemoryOAuthStore struct {
	mu   sync.Mutex
	now  func() time.Time
	recs map[string]memoryOAuthRecord
}

// MaxMemoryOAuthRecords bounds a MemoryOAuthStore.
const MaxMemoryOAuthRecords = 100000

// ErrOAuthStoreFull is the error of a Put into a full MemoryOAuthStore.
var ErrOAuthStoreFull = errors.New("oauth store: full (too many sign-ins under way)")

type memoryOAuthRecord struct {
	value []byte
	until time.Time
}

var _ oauth.Store = (*MemoryOAuthStore)(nil)

// NewMemoryOAuthStore returns an empty store reading the time from now
// (nil: time.Now).
func NewMemoryOAuthStore(now func() time.Time) *MemoryOAuthStore {
	if now == nil {
		now = time.Now
	}
	return &MemoryOAuthStore{now: now, recs: map[string]memoryOAuthRecord{}}
}

// live answers key's record, dropping it when expired. Called with mu held.
func (s *MemoryOAuthStore) live(key string) (memoryOAuthRecord, bool) {
	r, ok := s.recs[key]
	if ok && !s.now().Before(r.until) {
		delete(s.recs, key)
		return r, false
	}
	return r, ok
}

// Put implements oauth.Store.
func (s *MemoryOAuthStore) Put(_ context.Context, key string, value []byte, until time.Time) (bool, error) {
	if until.IsZero() {
		return false, errors.New("oauth store: no expiry")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.recs) > 0 && len(s.recs)%1024 == 0 {
		s.sweep()
	}
	if _, ok := s.live(key); ok {
		return false, nil
	}
	if !s.now().Before(until) {
		return true, nil // written and gone at once
	}
	if len(s.recs) >= MaxMemoryOAuthRecords {
		s.sweep()
		if len(s.recs) >= MaxMemoryOAuthRecords {
			return false, ErrOAuthStoreFull
		}
	}
	s.recs[key] = memoryOAuthRecord{value: slices.Clone(value), until: until}
	return true, nil
}

// sweep drops every expired record. Called with mu held.
func (s *MemoryOAuthStore) sweep() {
	now := s.now()
	for k, r := range s.recs {
		if !now.Before(r.until) {
			delete(s.recs, k)
		}
	}
}

// Get implements oauth.Store.
func (s *MemoryOAuthStore) Get(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.live(key)
	if !ok {
		return nil, broker.ErrNotFound
	}
	return slices.Clone(r.value), nil
}

// Take implements oauth.Store.
func (s *MemoryOAuthStore) Take(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.live(key)
	if !ok {
		return nil, broker.ErrNotFound
	}
	delete(s.recs, key)
	return r.value, nil
}

// Swap implements oauth.Store.
func (s *MemoryOAuthStore) Swap(_ context.Context, key string, value []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.live(key)
	if !ok {
		return nil, broker.ErrNotFound
	}
	s.recs[key] = memoryOAuthRecord{value: slices.Clone(value), until: r.until}
	return r.value, nil
}
