package conformance

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
)

// NewDueEnder returns two replicas of one empty ledger (the same value
// twice for a ledger held in one process), reading the time from clock
// where they read time at all. It is called once per case.
type NewDueEnder func(t *testing.T, clock *Clock) (a, b broker.Ledger)

type dueEnv struct {
	ledgerEnv
	a, b broker.Ledger
}

// dueEnderCases are the rules of broker.DueEnder, one function each.
var dueEnderCases = []namedCase[dueEnv]{
	{"EndDueEndsEveryDueTask", endDueEndsEveryDueTask},
	{"EndDueUpToLimit", endDueUpToLimit},
	{"EndDueSkipsEndedTasks", endDueSkipsEndedTasks},
	{"EndDueExactlyOnceAcrossReplicas", endDueExactlyOnceAcrossReplicas},
	{"UnackedBatchClaimedAfterItsLease", unackedBatchClaimedAfterItsLease},
	{"AckedBatchNeverClaimed", ackedBatchNeverClaimed},
}

// DueEnder runs the broker.DueEnder suite. The lease cases wait out
// o.ReapLease on the real clock, so build the store with a short one.
func DueEnder(t *testing.T, newDueEnder NewDueEnder, o Options) {
	o.check(t)
	if o.NoReapLeases == "" && (o.ReapLease <= 0 || o.ReapLease > time.Second) {
		t.Fatal("conformance: Options.ReapLease must be the store's reap lease, at most a second, unless NoReapLeases says why it has none")
	}
	run(t, dueEnderCases, func(t *testing.T) dueEnv {
		clock := testkit.NewClock(time.Now().Truncate(time.Millisecond))
		a, b := newDueEnder(t, clock)
		return dueEnv{ledgerEnv: ledgerEnv{ctx: t.Context(), clock: clock, l: a, o: o}, a: a, b: b}
	})
}

// recordDue records n tasks due by now (created an hour ago) and returns
// their ids.
func (e dueEnv) recordDue(t *testing.T, name string, n int, deadline time.Time) []string {
	t.Helper()
	var ids []string
	for i := range n {
		task, creds := newTask(e.clock.Now().Add(-time.Hour), fmt.Sprint(name, i), 1)
		task.Deadline = deadline
		creds[0].ExpiresAt = deadline
		e.record(t, task, creds)
		ids = append(ids, task.ID)
	}
	return ids
}

func (e dueEnv) endDue(t *testing.T, l broker.Ledger, limit int) []broker.EndedTask {
	t.Helper()
	ended, err := l.EndDue(e.ctx, e.clock.Now(), limit, "deadline passed")
	if err != nil {
		t.Fatalf("EndDue: %v", err)
	}
	return ended
}

func endedIDs(ended []broker.EndedTask) []string {
	var ids []string
	for _, e := range ended {
		ids = append(ids, e.Task.ID)
	}
	slices.Sort(ids)
	return ids
}

// endDueEndsEveryDueTask: EndDue ends each due task as End would (state
// expired, the reason, ended at now, credentials denied) and leaves tasks
// not yet due alone.
func endDueEndsEveryDueTask(t *testing.T, e dueEnv) {
	now := e.clock.Now()
	due := e.recordDue(t, "due", 3, now.Add(-time.Minute))
	later := e.recordDue(t, "later", 2, now.Add(time.Hour))
	ended := e.endDue(t, e.a, 10)
	if got := endedIDs(ended); !slices.Equal(got, due) {
		t.Fatalf("EndDue ended %v, want %v", got, due)
	}
	for _, en := range ended {
		if en.Task.State != broker.StateExpired || en.Task.EndReason != "deadline passed" || !sameMs(en.Task.EndedAt, now) || len(en.Creds) != 1 {
			t.Errorf("ended task %+v with %d credentials; want expired, the reason, ended now, 1 credential", en.Task, len(en.Creds))
		}
		if stored, _, err := e.l.Task(e.ctx, en.Task.ID); err != nil || stored.State != broker.StateExpired {
			t.Errorf("stored task %s = %s, %v; want expired", en.Task.ID, stored.State, err)
		}
		if !e.denied(t, en.Creds[0].ID) {
			t.Errorf("credential %s of a reaped task is not denied", en.Creds[0].ID)
		}
	}
	for _, id := range later {
		if stored, _, err := e.l.Task(e.ctx, id); err != nil || stored.State != broker.StateActive {
			t.Errorf("task not yet due %s = %s, %v; want active", id, stored.State, err)
		}
	}
	if ids, err := e.l.Due(e.ctx, now, 10); err != nil || len(ids) != 0 {
		t.Errorf("Due after EndDue = %v, %v; want none", ids, err)
	}
}

// endDueUpToLimit: EndDue ends at most limit tasks a call; zero ends none.
func endDueUpToLimit(t *testing.T, e dueEnv) {
	e.recordDue(t, "limit", 3, e.clock.Now().Add(-time.Minute))
	if got := e.endDue(t, e.a, 0); len(got) != 0 {
		t.Fatalf("EndDue(limit 0) ended %v", endedIDs(got))
	}
	if got := e.endDue(t, e.a, 2); len(got) != 2 {
		t.Fatalf("EndDue(limit 2) ended %d", len(got))
	}
	if got := e.endDue(t, e.a, 2); len(got) != 1 {
		t.Fatalf("second EndDue(limit 2) ended %d, want the 1 left", len(got))
	}
	if got := e.endDue(t, e.a, 2); len(got) != 0 {
		t.Fatalf("third EndDue ended %d, want none", len(got))
	}
}

// endDueSkipsEndedTasks: a due task that already ended is not ended
// again.
func endDueSkipsEndedTasks(t *testing.T, e dueEnv) {
	ids := e.recordDue(t, "skip", 2, e.clock.Now().Add(-time.Minute))
	if _, _, err := e.l.End(e.ctx, ids[0], broker.StateCompleted, "done", e.clock.Now()); err != nil {
		t.Fatalf("End: %v", err)
	}
	if got := endedIDs(e.endDue(t, e.a, 10)); !slices.Equal(got, ids[1:]) {
		t.Errorf("EndDue ended %v, want only %v", got, ids[1:])
	}
	if stored, _, _ := e.l.Task(e.ctx, ids[0]); stored.State != broker.StateCompleted || stored.EndReason != "done" {
		t.Errorf("the task ended before = %s (%s), want completed (done)", stored.State, stored.EndReason)
	}
}

// endDueExactlyOnceAcrossReplicas: replicas reaping at once end every due
// task exactly once between them.
func endDueExactlyOnceAcrossReplicas(t *testing.T, e dueEnv) {
	due := e.recordDue(t, "shared", 150, e.clock.Now().Add(-time.Minute))
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
	)
	for _, l := range []broker.Ledger{e.a, e.b} {
		wg.Go(func() {
			for {
				batch, err := l.EndDue(e.ctx, e.clock.Now(), 16, "deadline passed")
				if err != nil {
					t.Errorf("EndDue: %v", err)
					return
				}
				if len(batch) == 0 {
					return
				}
				mu.Lock()
				for _, en := range batch {
					seen[en.Task.ID]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != len(due) {
		t.Errorf("%d tasks ended, want %d", len(seen), len(due))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("task %s ended %d times", id, n)
		}
	}
}

// unackedBatchClaimedAfterItsLease: a batch not acknowledged within its
// lease is claimed by Unaudited, whole, once per lease.
func unackedBatchClaimedAfterItsLease(t *testing.T, e dueEnv) {
	if e.o.NoReapLeases != "" {
		t.Skipf("the store keeps no reap leases: %s", e.o.NoReapLeases)
	}
	ids := e.recordDue(t, "unacked", 2, e.clock.Now().Add(-time.Minute))
	ended := e.endDue(t, e.a, 10)
	if len(ended) != 2 || ended[0].Batch == "" || ended[1].Batch != ended[0].Batch {
		t.Fatalf("EndDue = %+v; want both tasks in one named batch", ended)
	}
	if got, err := e.b.Unaudited(e.ctx, e.clock.Now()); err != nil || len(got) != 0 {
		t.Fatalf("Unaudited within the lease = %+v, %v; want none", got, err)
	}
	var claimed []broker.ReapedBatch
	testkit.Eventually(t, func() bool {
		got, err := e.b.Unaudited(e.ctx, e.clock.Now())
		if err != nil {
			t.Fatalf("Unaudited: %v", err)
		}
		claimed = got
		return len(got) > 0
	}, "the batch is claimed once its lease expired")
	tasks := slices.Clone(claimed[0].Tasks)
	slices.Sort(tasks)
	if len(claimed) != 1 || claimed[0].ID != ended[0].Batch || !slices.Equal(tasks, ids) || len(claimed[0].Credentials) != 2 ||
		!sameMs(claimed[0].EndedAt, e.clock.Now()) {
		t.Errorf("claimed %+v, want batch %s of %v with 2 credentials", claimed, ended[0].Batch, ids)
	}
	if got, err := e.a.Unaudited(e.ctx, e.clock.Now()); err != nil || len(got) != 0 {
		t.Errorf("Unaudited right after a claim = %+v, %v; want none (the claim re-leased it)", got, err)
	}
}

// ackedBatchNeverClaimed: a batch acknowledged in time is never claimed,
// while one ended with it and not acknowledged is.
func ackedBatchNeverClaimed(t *testing.T, e dueEnv) {
	if e.o.NoReapLeases != "" {
		t.Skipf("the store keeps no reap leases: %s", e.o.NoReapLeases)
	}
	e.recordDue(t, "acked", 2, e.clock.Now().Add(-time.Minute))
	acked, unacked := e.endDue(t, e.a, 1), e.endDue(t, e.a, 1)
	if len(acked) != 1 || len(unacked) != 1 || acked[0].Batch == unacked[0].Batch {
		t.Fatalf("two EndDue calls = %+v, %+v; want one task each, in two batches", acked, unacked)
	}
	must(t, e.a.AckReaped(e.ctx, acked[0].Batch))
	var claimed []broker.ReapedBatch
	testkit.Eventually(t, func() bool {
		got, err := e.b.Unaudited(e.ctx, e.clock.Now())
		if err != nil {
			t.Fatalf("Unaudited: %v", err)
		}
		claimed = append(claimed, got...)
		return slices.ContainsFunc(claimed, func(b broker.ReapedBatch) bool { return b.ID == unacked[0].Batch })
	}, "the unacknowledged batch is claimed")
	for _, b := range claimed {
		if b.ID == acked[0].Batch {
			t.Errorf("the acknowledged batch %s was claimed", b.ID)
		}
	}
}
