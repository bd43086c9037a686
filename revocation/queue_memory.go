package revocation

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
)

// MemoryQueue is a broker.RevocationQueue held in one process's memory, for
// `valet dev` and tests. Its entries die with the process, so production
// uses RedisQueue. It is safe for concurrent use.
type MemoryQueue struct {
	now       func() time.Time
	retention time.Duration

	mu      sync.Mutex
	entries map[string]broker.PendingRevocation
}

var _ broker.RevocationQueue = (*MemoryQueue)(nil)

// NewMemoryQueue returns an empty queue whose entries vanish retention
// after their credential's expiry (DefaultRetention if zero), by the clock
// now (time.Now if nil).
func NewMemoryQueue(now func() time.Time, retention time.Duration) *MemoryQueue {
	if now == nil {
		now = time.Now
	}
	if retention <= 0 {
		retention = DefaultRetention
	}
	return &MemoryQueue{now: now, retention: retention, entries: map[string]broker.PendingRevocation{}}
}

// Enqueue implements broker.RevocationQueue.
func (q *MemoryQueue) Enqueue(_ context.Context, c broker.Credential, attempt int, next time.Time, lastErr string) error {
	if err := validatePending(c, attempt); err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.entries[c.ID] = broker.PendingRevocation{ID: c.ID, Credential: c, Attempt: attempt, Next: next, LastError: lastErr}
	return nil
}

// Due implements broker.RevocationQueue.
func (q *MemoryQueue) Due(_ context.Context, now time.Time, limit int) ([]broker.PendingRevocation, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.sweep()
	var out []broker.PendingRevocation
	for _, p := range q.entries {
		if !p.Next.After(now) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b broker.PendingRevocation) int {
		if c := a.Next.Compare(b.Next); c != 0 {
			return c
		}
		return compareStrings(a.ID, b.ID)
	})
	if limit >= 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

// Done implements broker.RevocationQueue.
func (q *MemoryQueue) Done(_ context.Context, id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.entries, id)
	return nil
}

// Pending implements broker.RevocationQueue.
func (q *MemoryQueue) Pending(context.Context) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.sweep()
	return len(q.entries), nil
}

// sweep drops entries past their credential's expiry plus the retention.
func (q *MemoryQueue) sweep() {
	now := q.now()
	for id, p := range q.entries {
		if now.After(p.Credential.ExpiresAt.Add(q.retention)) {
			delete(q.entries, id)
		}
	}
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
