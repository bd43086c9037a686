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

// renewed is a task's next deadline and a credential that lives until it.
func renewed(task broker.Task, by time.Duration, name string) (time.Time, broker.Credential) {
	to := task.Deadline.Add(by)
	c := cred(task.ID, fmt.Sprintf("jti-%s-%s", name, task.ID), task.CreatedAt)
	c.ExpiresAt = to
	return to, c
}

// renewMovesDeadlineAndAddsCredentials: the task reads back with the new
// deadline and its old and new credentials; it is due only at the new
// deadline; the new credential is on record and not denied.
func renewMovesDeadlineAndAddsCredentials(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "renew", 2)
	task.Audiences, task.Scopes = []string{"https://api.example.com", "b"}, []string{"read"}
	e.record(t, task, creds)
	to, fresh := renewed(task, time.Hour, "renewed")
	got, err := e.l.Renew(e.ctx, task.ID, task.Deadline, to, []broker.Credential{fresh})
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	want := task
	want.Deadline = to
	wantTask(t, got, want)
	gotTask, gotCreds, err := e.l.Task(e.ctx, task.ID)
	if err != nil {
		t.Fatalf("Task: %v", err)
	}
	wantTask(t, gotTask, want)
	if !slices.Equal(gotTask.Audiences, task.Audiences) || !slices.Equal(gotTask.Scopes, task.Scopes) {
		t.Errorf("audiences, scopes = %v, %v; want %v, %v as recorded", gotTask.Audiences, gotTask.Scopes, task.Audiences, task.Scopes)
	}
	wantCreds(t, gotCreds, append(slices.Clone(creds), fresh))
	if e.denied(t, fresh.ID) {
		t.Errorf("renewed credential %s is denied", fresh.ID)
	}
	if ids, err := e.l.Due(e.ctx, task.Deadline, 10); err != nil || slices.Contains(ids, task.ID) {
		t.Errorf("Due at the old deadline = %v, %v; want the task not due", ids, err)
	}
	if ids, err := e.l.Due(e.ctx, to, 10); err != nil || !slices.Contains(ids, task.ID) {
		t.Errorf("Due at the new deadline = %v, %v; want the task", ids, err)
	}
}

// renewRefusesEndedTask: an ended task is ErrNotActive, answered as stored,
// and nothing is written.
func renewRefusesEndedTask(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "renew-ended", 1)
	e.record(t, task, creds)
	if _, _, err := e.l.End(e.ctx, task.ID, broker.StateRevoked, "test", e.clock.Now()); err != nil {
		t.Fatalf("End: %v", err)
	}
	to, fresh := renewed(task, time.Hour, "late")
	got, err := e.l.Renew(e.ctx, task.ID, task.Deadline, to, []broker.Credential{fresh})
	if !errors.Is(err, broker.ErrNotActive) {
		t.Fatalf("Renew of an ended task: err = %v, want ErrNotActive", err)
	}
	if got.State != broker.StateRevoked {
		t.Errorf("Renew answered state %q, want revoked", got.State)
	}
	if _, _, err := e.l.Credential(e.ctx, fresh.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Credential(%q) after a refused renewal: err = %v, want ErrNotFound", fresh.ID, err)
	}
	if stored, _, _ := e.l.Task(e.ctx, task.ID); !sameMs(stored.Deadline, task.Deadline) {
		t.Errorf("deadline moved to %s by a refused renewal", stored.Deadline)
	}
}

// renewRefusesStaleDeadline: a renewal from a deadline the task no longer
// has is ErrConflict and writes nothing.
func renewRefusesStaleDeadline(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "renew-stale", 1)
	e.record(t, task, creds)
	to, fresh := renewed(task, time.Hour, "stale")
	_, err := e.l.Renew(e.ctx, task.ID, task.Deadline.Add(-time.Minute), to, []broker.Credential{fresh})
	if !errors.Is(err, broker.ErrConflict) {
		t.Fatalf("Renew from a stale deadline: err = %v, want ErrConflict", err)
	}
	if _, _, err := e.l.Credential(e.ctx, fresh.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Credential(%q) after a refused renewal: err = %v, want ErrNotFound", fresh.ID, err)
	}
	if _, err := e.l.Renew(e.ctx, task.ID, task.Deadline, task.Deadline, nil); err == nil {
		t.Error("Renew to the same deadline succeeded; want an error")
	}
}

// renewOfUnknownIsNotFound: renewing a task never recorded is ErrNotFound.
func renewOfUnknownIsNotFound(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
	_, err := e.l.Renew(e.ctx, "task-unknown", now.Add(time.Hour), now.Add(2*time.Hour), nil)
	if !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Renew of an unknown task: err = %v, want ErrNotFound", err)
	}
}

// renewExactlyOnceUnderConcurrency: of concurrent renewals from the same
// deadline exactly one succeeds; the others get ErrConflict.
func renewExactlyOnceUnderConcurrency(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "renew-race", 1)
	e.record(t, task, creds)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			to, fresh := renewed(task, time.Duration(i+1)*time.Minute, fmt.Sprintf("race%d", i))
			_, errs[i] = e.l.Renew(e.ctx, task.ID, task.Deadline, to, []broker.Credential{fresh})
		})
	}
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, broker.ErrConflict):
			t.Errorf("renewal %d: err = %v, want nil or ErrConflict", i, err)
		}
	}
	if won != 1 {
		t.Errorf("%d renewals succeeded, want exactly 1", won)
	}
	_, got, err := e.l.Task(e.ctx, task.ID)
	if err != nil || len(got) != 2 {
		t.Errorf("after the race the task has %d credentials (err %v), want 2", len(got), err)
	}
}

// renewedRecordsLiveUntilNewDeadlinePlusRetention: a renewed task and all
// its credentials stay readable until the new deadline plus retention.
func renewedRecordsLiveUntilNewDeadlinePlusRetention(t *testing.T, e ledgerEnv) {
	e.o.needClockExpiry(t)
	task, creds := newTask(e.clock.Now(), "renew-expiry", 1)
	e.record(t, task, creds)
	to, fresh := renewed(task, 2*time.Hour, "long")
	if _, err := e.l.Renew(e.ctx, task.ID, task.Deadline, to, []broker.Credential{fresh}); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	e.clock.Advance(to.Sub(e.clock.Now()) + e.o.Retention)
	if _, got, err := e.l.Task(e.ctx, task.ID); err != nil || len(got) != 2 {
		t.Fatalf("Task at the new deadline+retention: %d credentials, %v; want 2", len(got), err)
	}
	for _, c := range append(slices.Clone(creds), fresh) {
		if _, _, err := e.l.Credential(e.ctx, c.ID); err != nil {
			t.Errorf("Credential(%q) at the new deadline+retention: %v", c.ID, err)
		}
	}
	e.clock.Advance(time.Millisecond)
	e.wantGone(t, task, append(creds, fresh))
}

// endAfterRenewDeniesEveryCredential: ending a renewed task denies the
// credentials of before and after the renewal.
func endAfterRenewDeniesEveryCredential(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "renew-end", 1)
	e.record(t, task, creds)
	to, fresh := renewed(task, time.Hour, "end")
	if _, err := e.l.Renew(e.ctx, task.ID, task.Deadline, to, []broker.Credential{fresh}); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	_, ended, err := e.l.End(e.ctx, task.ID, broker.StateCompleted, "done", e.clock.Now())
	if err != nil {
		t.Fatalf("End: %v", err)
	}
	if len(ended) != 2 {
		t.Errorf("End answered %d credentials, want 2", len(ended))
	}
	for _, c := range append(creds, fresh) {
		if !e.denied(t, c.ID) {
			t.Errorf("credential %s not denied after End", c.ID)
		}
	}
}
