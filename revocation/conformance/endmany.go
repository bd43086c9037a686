package conformance

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// The rules of broker.ManyEnder, run with the ledger cases.

// endManyEndsEachAsEnd: EndMany ends every active task of a batch as End
// would (state, reason, time, credentials denied, off the due list), and
// answers, in the order asked, ended, not active (with the task as stored)
// or not found.
func endManyEndsEachAsEnd(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
	a, aCreds := newTask(now, "many-a", 2)
	b, bCreds := newTask(now, "many-b", 1)
	c, cCreds := newTask(now, "many-c", 0)
	other, otherCreds := newTask(now, "many-other", 1)
	for _, r := range []struct {
		t broker.Task
		c []broker.Credential
	}{{a, aCreds}, {b, bCreds}, {c, cCreds}, {other, otherCreds}} {
		e.record(t, r.t, r.c)
	}
	if _, _, err := e.l.End(e.ctx, b.ID, broker.StateCompleted, "done before", now); err != nil {
		t.Fatalf("End: %v", err)
	}
	e.clock.Advance(time.Minute)
	at := e.clock.Now()
	got, err := e.l.EndMany(e.ctx, []string{a.ID, b.ID, "task-never-recorded", c.ID}, broker.StateRevoked, "bulk", at)
	if err != nil {
		t.Fatalf("EndMany: %v", err)
	}
	outcomes := make([]broker.EndOutcome, len(got))
	for i, r := range got {
		outcomes[i] = r.Outcome
	}
	if want := []broker.EndOutcome{broker.EndedNow, broker.EndedNotActive, broker.EndedNotFound, broker.EndedNow}; !slices.Equal(outcomes, want) {
		t.Fatalf("EndMany outcomes = %v, want %v", outcomes, want)
	}
	for i, task := range []broker.Task{a, c} {
		r := got[[]int{0, 3}[i]]
		want := task
		want.State, want.EndReason, want.EndedAt = broker.StateRevoked, "bulk", at
		wantTask(t, r.Task, want)
		stored, _, err := e.l.Task(e.ctx, task.ID)
		if err != nil {
			t.Fatalf("Task: %v", err)
		}
		wantTask(t, stored, want)
	}
	wantCreds(t, got[0].Creds, aCreds)
	if got[1].Task.State != broker.StateCompleted || got[1].Task.EndReason != "done before" {
		t.Errorf("a task ended before = %+v, want it as stored (completed)", got[1].Task)
	}
	wantCreds(t, got[1].Creds, bCreds)
	for _, cr := range append(slices.Clone(aCreds), bCreds...) {
		if !e.denied(t, cr.ID) {
			t.Errorf("Credential(%q) not denied after EndMany", cr.ID)
		}
	}
	if e.denied(t, otherCreds[0].ID) {
		t.Errorf("EndMany denied a credential of a task it was not given")
	}
	due, err := e.l.Due(e.ctx, now.Add(2*time.Hour), 10)
	if err != nil {
		t.Fatalf("Due: %v", err)
	}
	if want := []string{other.ID}; !slices.Equal(due, want) {
		t.Errorf("Due after EndMany = %v, want only the task it was not given %v", due, want)
	}
}

// endManyListsChildren: each result names the task's direct children, so
// the caller can end them too.
func endManyListsChildren(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
	parent, pCreds := newTask(now, "many-parent", 1)
	e.record(t, parent, pCreds)
	child, cCreds := childOf(now, parent, "many-child", 1)
	e.record(t, child, cCreds)
	got, err := e.l.EndMany(e.ctx, []string{parent.ID}, broker.StateRevoked, "bulk", now)
	if err != nil {
		t.Fatalf("EndMany: %v", err)
	}
	if len(got) != 1 || got[0].Outcome != broker.EndedNow || !slices.Equal(got[0].Children, []string{child.ID}) {
		t.Fatalf("EndMany = %+v, want the parent ended with its child %s listed", got, child.ID)
	}
}

// endManyRefusesTooManyOrBadInput: more than broker.MaxEndMany ids, an
// empty id or a state that is not final are refused, and nothing ends.
func endManyRefusesTooManyOrBadInput(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "many-bad", 1)
	e.record(t, task, creds)
	ids := []string{task.ID}
	for i := range broker.MaxEndMany {
		ids = append(ids, fmt.Sprint("task-many-", i))
	}
	now := e.clock.Now()
	for name, call := range map[string]func() error{
		"too many": func() error { _, err := e.l.EndMany(e.ctx, ids, broker.StateRevoked, "x", now); return err },
		"empty id": func() error {
			_, err := e.l.EndMany(e.ctx, []string{task.ID, ""}, broker.StateRevoked, "x", now)
			return err
		},
		"not final": func() error {
			_, err := e.l.EndMany(e.ctx, []string{task.ID}, broker.StateActive, "x", now)
			return err
		},
	} {
		if err := call(); err == nil {
			t.Errorf("EndMany with %s: no error", name)
		}
	}
	if e.denied(t, creds[0].ID) {
		t.Fatal("a refused EndMany denied a credential")
	}
}

// endManyExactlyOnceUnderConcurrency: batches and Ends racing over the
// same tasks end each exactly once.
func endManyExactlyOnceUnderConcurrency(t *testing.T, e ledgerEnv) {
	var ids []string
	for i := range 20 {
		task, creds := newTask(e.clock.Now(), fmt.Sprint("many-race-", i), 1)
		e.record(t, task, creds)
		ids = append(ids, task.ID)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		ended = map[string]int{}
	)
	for w := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			got, err := e.l.EndMany(e.ctx, ids, broker.StateRevoked, fmt.Sprint("batch ", w), e.clock.Now())
			if err != nil {
				t.Errorf("EndMany: %v", err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for i, r := range got {
				if r.Outcome == broker.EndedNow {
					ended[ids[i]]++
				}
			}
		}()
		go func() {
			defer wg.Done()
			for _, id := range ids[w*5 : w*5+5] {
				_, _, err := e.l.End(e.ctx, id, broker.StateRevoked, "single", e.clock.Now())
				switch {
				case err == nil:
					mu.Lock()
					ended[id]++
					mu.Unlock()
				case !errors.Is(err, broker.ErrNotActive):
					t.Errorf("End: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	for _, id := range ids {
		if ended[id] != 1 {
			t.Errorf("task %s ended %d times, want exactly once", id, ended[id])
		}
	}
}
