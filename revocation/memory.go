package revocation

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
)

// MemoryLedger is a broker.Ledger held in one process's memory, for
// `valet dev` and tests. It keeps the Redis ledger's semantics, with expiry
// driven by the injected clock: records vanish after their deadline plus the
// retention, deny entries after the credential's expiry. It is safe for
// concurrent use; its records die with the process.
type MemoryLedger struct {
	now       func() time.Time
	retention time.Duration

	mu        sync.Mutex
	tasks     map[string]*memTask
	creds     map[string]memCred
	deny      map[string]time.Time // credential id → denied until
	lastSweep time.Time
	tree      map[string][]string // task id → ids of its children
	once      map[string]time.Time
	counts    map[string]memCount
	recsOnce  sync.Once
	recs      *memRecords // see memory_records.go
	feedOnce  sync.Once
	feed      *MemoryFeed // see memory_feed.go
}

type memTask struct {
	task     broker.Task
	creds    []broker.Credential
	expireAt time.Time
}

type memCred struct {
	cred     broker.Credential
	expireAt time.Time
}

var _ broker.Ledger = (*MemoryLedger)(nil)

// NewMemoryLedger returns an empty ledger that reads the time from now and
// keeps finished tasks for retention after their deadline (DefaultRetention
// if zero or negative). A nil now means time.Now.
func NewMemoryLedger(now func() time.Time, retention time.Duration) *MemoryLedger {
	if now == nil {
		now = time.Now
	}
	if retention <= 0 {
		retention = DefaultRetention
	}
	return &MemoryLedger{
		now: now, retention: retention,
		tasks: map[string]*memTask{}, creds: map[string]memCred{}, deny: map[string]time.Time{},
		tree: map[string][]string{}, once: map[string]time.Time{}, counts: map[string]memCount{},
	}
}

// Record implements broker.Ledger. A task or credential id the ledger
// already holds gives ErrDuplicate.
func (l *MemoryLedger) Record(_ context.Context, t broker.Task, creds []broker.Credential) error {
	if err := validateRecord(t, creds); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.sweep(now)
	if _, ok := l.task(t.ID, now); ok {
		return fmt.Errorf("recording task %s: %w", t.ID, ErrDuplicate)
	}
	for _, c := range creds {
		if _, ok := l.cred(c.ID, now); ok {
			return fmt.Errorf("recording task %s: credential %s: %w", t.ID, c.ID, ErrDuplicate)
		}
	}
	// A new task has no children yet, even under the id of a task whose
	// records expired since the last sweep.
	delete(l.tree, t.ID)
	if t.Parent != "" {
		if p, ok := l.task(t.Parent, now); !ok || p.task.State != broker.StateActive {
			return fmt.Errorf("recording task %s: parent %s: %w", t.ID, t.Parent, broker.ErrNotActive)
		}
		l.tree[t.Parent] = append(l.tree[t.Parent], t.ID)
	}
	mt := &memTask{task: copyTask(t), expireAt: recordsExpireAt(t, creds, l.retention)}
	for _, c := range creds {
		c = copyCred(c)
		mt.creds = append(mt.creds, c)
		l.creds[c.ID] = memCred{cred: c, expireAt: mt.expireAt}
	}
	l.tasks[t.ID] = mt
	return nil
}

// Task implements broker.Ledger.
func (l *MemoryLedger) Task(_ context.Context, id string) (broker.Task, []broker.Credential, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	mt, ok := l.task(id, l.now())
	if !ok {
		return broker.Task{}, nil, fmt.Errorf("reading task %s: %w", id, broker.ErrNotFound)
	}
	return copyTask(mt.task), slices.Clone(mt.creds), nil
}

// End implements broker.Ledger.
func (l *MemoryLedger) End(_ context.Context, id string, state broker.State, reason string, at time.Time) (broker.Task, []broker.Credential, error) {
	if err := validateEnd(state, at); err != nil {
		return broker.Task{}, nil, fmt.Errorf("ending task %s: %w", id, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	mt, ok := l.task(id, now)
	if !ok {
		return broker.Task{}, nil, fmt.Errorf("ending task %s: %w", id, broker.ErrNotFound)
	}
	if mt.task.State != broker.StateActive {
		return copyTask(mt.task), slices.Clone(mt.creds),
			fmt.Errorf("ending task %s: it is %s: %w", id, mt.task.State, broker.ErrNotActive)
	}
	mt.task.State, mt.task.EndReason, mt.task.EndedAt = state, reason, truncMs(at)
	for _, c := range mt.creds {
		l.deny[c.ID] = later(c.ExpiresAt, now.Add(time.Second))
	}
	l.feedRevoked(id, mt.creds)
	return copyTask(mt.task), slices.Clone(mt.creds), nil
}

// Credential implements broker.Ledger.
func (l *MemoryLedger) Credential(_ context.Context, id string) (broker.Credential, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	mc, ok := l.cred(id, now)
	if !ok {
		return broker.Credential{}, false, fmt.Errorf("reading credential %s: %w", id, broker.ErrNotFound)
	}
	until, denied := l.deny[id]
	return mc.cred, denied && !now.After(until), nil
}

// Due implements broker.Ledger: earliest deadline first, like the Redis
// ledger.
func (l *MemoryLedger) Due(_ context.Context, now time.Time, limit int) ([]string, error) {
	if limit <= 0 {
		return nil, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	clock := l.now()
	var due []*memTask
	for _, mt := range l.tasks {
		if mt.task.State == broker.StateActive && !mt.task.Deadline.After(now) && !clock.After(mt.expireAt) {
			due = append(due, mt)
		}
	}
	slices.SortFunc(due, func(a, b *memTask) int {
		return cmp.Or(a.task.Deadline.Compare(b.task.Deadline), cmp.Compare(a.task.ID, b.task.ID))
	})
	ids := make([]string, 0, min(limit, len(due)))
	for _, mt := range due[:min(limit, len(due))] {
		ids = append(ids, mt.task.ID)
	}
	return ids, nil
}

// Ping implements broker.Ledger; memory is always reachable.
func (l *MemoryLedger) Ping(context.Context) error { return nil }

// task and cred return live records only. Callers hold mu.
func (l *MemoryLedger) task(id string, now time.Time) (*memTask, bool) {
	mt, ok := l.tasks[id]
	return mt, ok && !now.After(mt.expireAt)
}

func (l *MemoryLedger) cred(id string, now time.Time) (memCred, bool) {
	mc, ok := l.creds[id]
	return mc, ok && !now.After(mc.expireAt)
}

// sweep drops expired records at most once a minute of ledger time, so
// memory stays bounded without a background goroutine. Callers hold mu.
func (l *MemoryLedger) sweep(now time.Time) {
	if now.Sub(l.lastSweep) < time.Minute {
		return
	}
	l.lastSweep = now
	for id, mt := range l.tasks {
		if now.After(mt.expireAt) {
			delete(l.tasks, id)
		}
	}
	for id, mc := range l.creds {
		if now.After(mc.expireAt) {
			delete(l.creds, id)
		}
	}
	for id, until := range l.deny {
		if now.After(until) {
			delete(l.deny, id)
		}
	}
	for id := range l.tree {
		if _, ok := l.tasks[id]; !ok {
			delete(l.tree, id)
		}
	}
	for k, until := range l.once {
		if now.After(until) {
			delete(l.once, k)
		}
	}
	for k, c := range l.counts {
		if now.After(c.until) {
			delete(l.counts, k)
		}
	}
}

// copyTask and copyCred give each caller its own copy, with times as the
// Redis ledger stores them (unix ms, UTC).
func copyTask(t broker.Task) broker.Task {
	t.Tools = slices.Clone(t.Tools)
	t.Act = slices.Clone(t.Act)
	t.Chain = slices.Clone(t.Chain)
	t.Audiences, t.Scopes = slices.Clone(t.Audiences), slices.Clone(t.Scopes)
	t.CreatedAt, t.Deadline, t.EndedAt = truncMs(t.CreatedAt), truncMs(t.Deadline), truncMs(t.EndedAt)
	return t
}

func copyCred(c broker.Credential) broker.Credential {
	c.IssuedAt, c.ExpiresAt = truncMs(c.IssuedAt), truncMs(c.ExpiresAt)
	return c
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

type memCount struct {
	n     int64
	until time.Time
}

var _ broker.Limiter = (*MemoryLedger)(nil)

// Children implements broker.Ledger.
func (l *MemoryLedger) Children(_ context.Context, id string) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.task(id, l.now()); !ok {
		return nil, nil
	}
	return slices.Clone(l.tree[id]), nil
}

// Once implements broker.Limiter.
func (l *MemoryLedger) Once(_ context.Context, key string, until time.Time) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if prev, ok := l.once[key]; ok && !now.After(prev) {
		return false, nil
	}
	l.once[key] = until
	return true, nil
}

// Count implements broker.Limiter.
func (l *MemoryLedger) Count(_ context.Context, key string, until time.Time) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.counts[key]
	if l.now().After(c.until) {
		c = memCount{}
	}
	c.n++
	c.until = later(c.until, until)
	l.counts[key] = c
	return c.n, nil
}

// Renew implements broker.Ledger.
func (l *MemoryLedger) Renew(_ context.Context, id string, from, to time.Time, creds []broker.Credential) (broker.Task, error) {
	if err := validateRenew(id, from, to, creds); err != nil {
		return broker.Task{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	mt, ok := l.task(id, now)
	switch {
	case !ok:
		return broker.Task{}, fmt.Errorf("renewing task %s: %w", id, broker.ErrNotFound)
	case mt.task.State != broker.StateActive:
		return copyTask(mt.task), fmt.Errorf("renewing task %s: it is %s: %w", id, mt.task.State, broker.ErrNotActive)
	case !mt.task.Deadline.Equal(truncMs(from)):
		return copyTask(mt.task), fmt.Errorf("renewing task %s: its deadline is %s, not %s: %w", id, mt.task.Deadline, truncMs(from), broker.ErrConflict)
	}
	for _, c := range creds {
		if _, ok := l.cred(c.ID, now); ok {
			return broker.Task{}, fmt.Errorf("renewing task %s: credential %s: %w", id, c.ID, ErrDuplicate)
		}
	}
	mt.task.Deadline = truncMs(to)
	mt.expireAt = later(mt.expireAt, recordsExpireAt(mt.task, creds, l.retention))
	for _, c := range creds {
		c = copyCred(c)
		mt.creds = append(mt.creds, c)
		l.creds[c.ID] = memCred{cred: c, expireAt: mt.expireAt}
	}
	// Every credential record of the task lives as long as the task's.
	for _, c := range mt.creds {
		if mc, ok := l.creds[c.ID]; ok {
			mc.expireAt = later(mc.expireAt, mt.expireAt)
			l.creds[c.ID] = mc
		}
	}
	return copyTask(mt.task), nil
}
