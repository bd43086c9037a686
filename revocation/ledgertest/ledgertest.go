// Package ledgertest is the conformance suite every broker.Ledger must pass,
// so the Redis and in-memory ledgers keep one contract.
package ledgertest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// Clock is a settable fake clock. The suite starts it at the real time, so a
// ledger whose records expire by a real clock (Redis TTLs) sees sensible
// times too.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock that reads t until moved.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Options says what the ledger under test supports beyond the contract's
// common part.
type Options struct {
	// ClockDrivesExpiry: the ledger expires records by the Clock it was
	// given, so the suite can test expiry by advancing it. Leave it false
	// for ledgers that expire by a real clock (Redis); test their TTLs
	// directly.
	ClockDrivesExpiry bool
	// Retention is the retention the ledger was built with; needed when
	// ClockDrivesExpiry is set.
	Retention time.Duration
}

// Run runs the suite. newLedger is called once per test case and must return
// an empty ledger that reads the time from clock where it reads time at all.
func Run(t *testing.T, newLedger func(t *testing.T, clock *Clock) broker.Ledger, opts ...Options) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.ClockDrivesExpiry && o.Retention <= 0 {
		t.Fatal("ledgertest: Options.Retention must be set with ClockDrivesExpiry")
	}
	setup := func(t *testing.T) (context.Context, *Clock, broker.Ledger) {
		clock := NewClock(time.Now().Truncate(time.Millisecond))
		return t.Context(), clock, newLedger(t, clock)
	}

	// ChainRoundTrip: the chain and the user a task acts for come back as
	// recorded; incident controls, epochs and bulk jobs read them.
	t.Run("ChainRoundTrip", func(t *testing.T) {
		ctx, clock, l := setup(t)
		task, creds := newTask(clock.Now(), "chain", 1)
		task.Agent, task.Issuer = "agent-b", "other-idp"
		task.Subject, task.SubjectIssuer, task.Act = "user-u", "corp-idp", []string{"agent-b", "agent-a"}
		task.Chain = []broker.Link{{Agent: "agent-a", Issuer: "corp-idp"}, {Agent: "agent-b", Issuer: "other-idp"}}
		if err := l.Record(ctx, task, creds); err != nil {
			t.Fatalf("Record: %v", err)
		}
		got, _, err := l.Task(ctx, task.ID)
		if err != nil {
			t.Fatalf("Task: %v", err)
		}
		if !slices.Equal(got.Chain, task.Chain) || got.SubjectIssuer != task.SubjectIssuer || !slices.Equal(got.Links(), task.Links()) {
			t.Errorf("chain differs:\n got  %+v\n want %+v", got, task)
		}
	})

	t.Run("RecordRoundTrip", func(t *testing.T) {
		ctx, clock, l := setup(t)
		now := clock.Now()
		task, creds := newTask(now, "a", 3)
		// Sub-millisecond parts are dropped; ids with ':' and '%' must not
		// bend key names.
		task.CreatedAt = task.CreatedAt.Add(123 * time.Microsecond)
		task.Intent = "deploy ünïcode: 50% of \"prod\"\n"
		creds[0].ID = "tok:en%3A:" + task.ID
		creds[1].Kind, creds[1].Parent = broker.KindVaultToken, ""
		creds[2].Kind, creds[2].Parent = broker.KindVaultLease, creds[1].ID
		if err := l.Record(ctx, task, creds); err != nil {
			t.Fatalf("Record: %v", err)
		}
		gotTask, gotCreds, err := l.Task(ctx, task.ID)
		if err != nil {
			t.Fatalf("Task: %v", err)
		}
		wantTask(t, gotTask, task)
		wantCreds(t, gotCreds, creds)
		for _, c := range creds {
			got, denied, err := l.Credential(ctx, c.ID)
			if err != nil {
				t.Fatalf("Credential(%q): %v", c.ID, err)
			}
			wantCreds(t, []broker.Credential{got}, []broker.Credential{c})
			if denied {
				t.Errorf("Credential(%q) denied before End", c.ID)
			}
		}

		// A task with no credentials and no tools is valid too.
		bare, _ := newTask(now, "bare", 0)
		bare.Tools, bare.CreatedAt = nil, time.Time{}
		if err := l.Record(ctx, bare, nil); err != nil {
			t.Fatalf("Record bare task: %v", err)
		}
		gotTask, gotCreds, err = l.Task(ctx, bare.ID)
		if err != nil {
			t.Fatalf("Task bare: %v", err)
		}
		wantTask(t, gotTask, bare)
		if len(gotCreds) != 0 {
			t.Errorf("bare task has credentials %v", gotCreds)
		}
	})

	t.Run("DuplicateRecordFails", func(t *testing.T) {
		ctx, clock, l := setup(t)
		task, creds := newTask(clock.Now(), "dup", 2)
		if err := l.Record(ctx, task, creds); err != nil {
			t.Fatalf("Record: %v", err)
		}

		again := task
		again.Intent = "overwrite"
		againCreds := []broker.Credential{cred(task.ID, "other-"+task.ID, clock.Now())}
		if err := l.Record(ctx, again, againCreds); err == nil {
			t.Fatal("second Record of the same task id succeeded")
		}
		// A new task may not take over a credential id either.
		thief, _ := newTask(clock.Now(), "thief", 0)
		stolen := creds[1]
		stolen.TaskID = thief.ID
		if err := l.Record(ctx, thief, []broker.Credential{stolen}); err == nil {
			t.Fatal("Record of a new task with a recorded credential id succeeded")
		}

		gotTask, gotCreds, err := l.Task(ctx, task.ID)
		if err != nil {
			t.Fatalf("Task: %v", err)
		}
		wantTask(t, gotTask, task)
		wantCreds(t, gotCreds, creds)
		if _, _, err := l.Task(ctx, thief.ID); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("failed Record left task behind: Task err = %v, want ErrNotFound", err)
		}
		for _, id := range []string{againCreds[0].ID, stolen.ID} {
			c, _, err := l.Credential(ctx, id)
			if errors.Is(err, broker.ErrNotFound) {
				continue
			}
			if err != nil || c.TaskID != task.ID {
				t.Errorf("Credential(%q) = task %q, %v after failed Records; want untouched or absent", id, c.TaskID, err)
			}
		}
	})

	t.Run("RecordRejectsInvalid", func(t *testing.T) {
		ctx, clock, l := setup(t)
		now := clock.Now()
		tests := []struct {
			name  string
			edit  func(*broker.Task, []broker.Credential)
			creds int
		}{
			{name: "empty id", edit: func(t *broker.Task, _ []broker.Credential) { t.ID = "" }},
			{name: "not active", edit: func(t *broker.Task, _ []broker.Credential) { t.State = broker.StateCompleted }},
			{name: "no deadline", edit: func(t *broker.Task, _ []broker.Credential) { t.Deadline = time.Time{} }},
			{name: "credential of another task", creds: 1, edit: func(_ *broker.Task, c []broker.Credential) { c[0].TaskID = "someone-else" }},
			{name: "credential without id", creds: 1, edit: func(_ *broker.Task, c []broker.Credential) { c[0].ID = "" }},
			{name: "credential without expiry", creds: 1, edit: func(_ *broker.Task, c []broker.Credential) { c[0].ExpiresAt = time.Time{} }},
			{name: "credential twice", creds: 2, edit: func(_ *broker.Task, c []broker.Credential) { c[1].ID = c[0].ID }},
		}
		for i, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				task, creds := newTask(now, fmt.Sprint("invalid", i), tt.creds)
				id := task.ID
				tt.edit(&task, creds)
				if err := l.Record(ctx, task, creds); err == nil {
					t.Fatal("Record succeeded")
				}
				if _, _, err := l.Task(ctx, id); !errors.Is(err, broker.ErrNotFound) {
					t.Errorf("Task after rejected Record: err = %v, want ErrNotFound", err)
				}
			})
		}
	})

	t.Run("UnknownIsNotFound", func(t *testing.T) {
		ctx, clock, l := setup(t)
		if _, _, err := l.Task(ctx, "no-such-task"); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Task: err = %v, want ErrNotFound", err)
		}
		if _, _, err := l.Credential(ctx, "no-such-credential"); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Credential: err = %v, want ErrNotFound", err)
		}
		if _, _, err := l.End(ctx, "no-such-task", broker.StateRevoked, "test", clock.Now()); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("End: err = %v, want ErrNotFound", err)
		}
	})

	t.Run("EndDeniesCredentials", func(t *testing.T) {
		ctx, clock, l := setup(t)
		task, creds := newTask(clock.Now(), "end", 3)
		creds[0].ID = "urn:jti:100%:" + task.ID // must be denied under its own name
		other, otherCreds := newTask(clock.Now(), "bystander", 2)
		for _, r := range []struct {
			t broker.Task
			c []broker.Credential
		}{{task, creds}, {other, otherCreds}} {
			if err := l.Record(ctx, r.t, r.c); err != nil {
				t.Fatalf("Record: %v", err)
			}
		}
		if _, _, err := l.End(ctx, task.ID, broker.StateActive, "not final", clock.Now()); err == nil {
			t.Error("End to the active state succeeded")
		}

		clock.Advance(time.Minute)
		at := clock.Now().Add(456 * time.Microsecond)
		ended, endedCreds, err := l.End(ctx, task.ID, broker.StateCompleted, "agent done", at)
		if err != nil {
			t.Fatalf("End: %v", err)
		}
		want := task
		want.State, want.EndReason, want.EndedAt = broker.StateCompleted, "agent done", at
		wantTask(t, ended, want)
		wantCreds(t, endedCreds, creds)
		stored, _, err := l.Task(ctx, task.ID)
		if err != nil {
			t.Fatalf("Task: %v", err)
		}
		wantTask(t, stored, want)
		for _, c := range creds {
			if _, denied, err := l.Credential(ctx, c.ID); err != nil || !denied {
				t.Errorf("Credential(%q) after End: denied = %v, err = %v; want denied", c.ID, denied, err)
			}
		}

		again, againCreds, err := l.End(ctx, task.ID, broker.StateRevoked, "too late", clock.Now())
		if !errors.Is(err, broker.ErrNotActive) {
			t.Fatalf("second End: err = %v, want ErrNotActive", err)
		}
		wantTask(t, again, want)
		wantCreds(t, againCreds, creds)

		// The bystander is untouched.
		got, _, err := l.Task(ctx, other.ID)
		if err != nil {
			t.Fatalf("Task bystander: %v", err)
		}
		wantTask(t, got, other)
		for _, c := range otherCreds {
			if _, denied, err := l.Credential(ctx, c.ID); err != nil || denied {
				t.Errorf("bystander Credential(%q): denied = %v, err = %v; want live", c.ID, denied, err)
			}
		}
	})

	t.Run("ConcurrentEndHasOneWinner", func(t *testing.T) {
		ctx, clock, l := setup(t)
		task, creds := newTask(clock.Now(), "race", 2)
		if err := l.Record(ctx, task, creds); err != nil {
			t.Fatalf("Record: %v", err)
		}
		const n = 50
		var (
			wg      sync.WaitGroup
			wins    atomic.Int32
			winner  atomic.Value
			start   = make(chan struct{})
			errs    = make(chan error, n)
			endedAt = clock.Now()
		)
		for i := range n {
			wg.Go(func() {
				<-start
				reason := fmt.Sprint("racer ", i)
				_, _, err := l.End(ctx, task.ID, broker.StateRevoked, reason, endedAt)
				switch {
				case err == nil:
					wins.Add(1)
					winner.Store(reason)
				case !errors.Is(err, broker.ErrNotActive):
					errs <- err
				}
			})
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("losing End: err = %v, want ErrNotActive", err)
		}
		if got := wins.Load(); got != 1 {
			t.Fatalf("%d of %d concurrent Ends succeeded, want exactly 1", got, n)
		}
		stored, _, err := l.Task(ctx, task.ID)
		if err != nil {
			t.Fatalf("Task: %v", err)
		}
		if stored.EndReason != winner.Load() {
			t.Errorf("stored end reason %q, want the winner's %q", stored.EndReason, winner.Load())
		}
	})

	t.Run("Due", func(t *testing.T) {
		ctx, clock, l := setup(t)
		now := clock.Now()
		deadlines := []struct {
			name string
			at   time.Time
		}{
			{"late-2", now.Add(-2 * time.Minute)},
			{"late-1", now.Add(-time.Minute)},
			{"on-time", now},
			{"future", now.Add(time.Millisecond)},
			{"far-future", now.Add(time.Hour)},
		}
		ids := map[string]string{}
		for _, d := range deadlines {
			task, creds := newTask(now.Add(-time.Hour), d.name, 1)
			task.Deadline = d.at
			for i := range creds {
				creds[i].ExpiresAt = d.at
			}
			if err := l.Record(ctx, task, creds); err != nil {
				t.Fatalf("Record %s: %v", d.name, err)
			}
			ids[d.name] = task.ID
		}
		tests := []struct {
			name  string
			limit int
			want  []string
		}{
			{name: "all due", limit: 10, want: []string{ids["late-2"], ids["late-1"], ids["on-time"]}},
			{name: "limited", limit: 2, want: []string{ids["late-2"], ids["late-1"]}},
			{name: "zero limit", limit: 0, want: nil},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				got, err := l.Due(ctx, now, tt.limit)
				if err != nil {
					t.Fatalf("Due: %v", err)
				}
				if !slices.Equal(got, tt.want) {
					t.Errorf("Due(now, %d) = %v, want %v", tt.limit, got, tt.want)
				}
			})
		}
		if _, _, err := l.End(ctx, ids["late-2"], broker.StateExpired, "deadline", now); err != nil {
			t.Fatalf("End: %v", err)
		}
		got, err := l.Due(ctx, now, 10)
		if err != nil {
			t.Fatalf("Due: %v", err)
		}
		if want := []string{ids["late-1"], ids["on-time"]}; !slices.Equal(got, want) {
			t.Errorf("Due after End = %v, want %v", got, want)
		}
	})

	if !o.ClockDrivesExpiry {
		return
	}

	t.Run("RecordsExpireAfterRetention", func(t *testing.T) {
		ctx, clock, l := setup(t)
		task, creds := newTask(clock.Now(), "expiry", 1)
		if err := l.Record(ctx, task, creds); err != nil {
			t.Fatalf("Record: %v", err)
		}
		clock.Advance(task.Deadline.Sub(clock.Now()) + o.Retention)
		if _, _, err := l.Task(ctx, task.ID); err != nil {
			t.Fatalf("Task at deadline+retention: %v", err)
		}
		if ids, err := l.Due(ctx, clock.Now(), 10); err != nil || !slices.Equal(ids, []string{task.ID}) {
			t.Fatalf("Due at deadline+retention = %v, %v; want the task", ids, err)
		}
		clock.Advance(time.Millisecond)
		if _, _, err := l.Task(ctx, task.ID); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Task after deadline+retention: err = %v, want ErrNotFound", err)
		}
		if _, _, err := l.Credential(ctx, creds[0].ID); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Credential after deadline+retention: err = %v, want ErrNotFound", err)
		}
		if ids, err := l.Due(ctx, clock.Now(), 10); err != nil || len(ids) != 0 {
			t.Errorf("Due after deadline+retention = %v, %v; want none", ids, err)
		}
		// The id is free again, as it is once Redis drops the keys.
		task.Deadline = clock.Now().Add(time.Hour)
		creds[0].ExpiresAt = task.Deadline
		if err := l.Record(ctx, task, creds); err != nil {
			t.Errorf("Record after expiry: %v", err)
		}
	})

	t.Run("DenyLastsUntilCredentialExpiry", func(t *testing.T) {
		ctx, clock, l := setup(t)
		task, creds := newTask(clock.Now(), "deny", 2)
		creds[0].ExpiresAt = clock.Now().Add(10 * time.Minute)
		creds[1].ExpiresAt = clock.Now().Add(-time.Minute) // already expired
		if err := l.Record(ctx, task, creds); err != nil {
			t.Fatalf("Record: %v", err)
		}
		if _, _, err := l.End(ctx, task.ID, broker.StateRevoked, "test", clock.Now()); err != nil {
			t.Fatalf("End: %v", err)
		}
		denied := func(id string) bool {
			t.Helper()
			_, d, err := l.Credential(ctx, id)
			if err != nil {
				t.Fatalf("Credential(%q): %v", id, err)
			}
			return d
		}
		if !denied(creds[0].ID) || !denied(creds[1].ID) {
			t.Fatal("credentials not denied right after End")
		}
		clock.Advance(time.Second)
		if !denied(creds[0].ID) || !denied(creds[1].ID) {
			t.Error("deny entries gone before one second")
		}
		clock.Advance(time.Millisecond)
		if denied(creds[1].ID) {
			t.Error("deny entry of an expired credential outlived its one-second floor")
		}
		clock.Advance(creds[0].ExpiresAt.Sub(clock.Now()))
		if !denied(creds[0].ID) {
			t.Error("deny entry gone before the credential expired")
		}
		clock.Advance(time.Millisecond)
		if denied(creds[0].ID) {
			t.Error("deny entry outlived the credential")
		}
	})
}

var seq atomic.Uint64

// newTask returns an active task due in an hour, and n credentials of it.
// Ids are unique within the process.
func newTask(now time.Time, name string, n int) (broker.Task, []broker.Credential) {
	id := fmt.Sprintf("task-%s-%d-%d", name, now.UnixNano(), seq.Add(1))
	t := broker.Task{
		ID:        id,
		State:     broker.StateActive,
		Agent:     "agent-" + name,
		Issuer:    "corp-idp",
		Template:  "deploy",
		Intent:    "ship " + name,
		Tools:     []string{"github.pr.read", "github.pr.merge"},
		CreatedAt: now,
		Deadline:  now.Add(time.Hour),
	}
	creds := make([]broker.Credential, n)
	for i := range creds {
		creds[i] = cred(id, fmt.Sprintf("jti-%d-%s", i, id), now)
	}
	return t, creds
}

func cred(taskID, id string, now time.Time) broker.Credential {
	return broker.Credential{
		ID: id, Kind: broker.KindJWT, TaskID: taskID,
		IssuedAt: now, ExpiresAt: now.Add(30 * time.Minute),
	}
}

// wantTask compares every field, times to the millisecond.
func wantTask(t *testing.T, got, want broker.Task) {
	t.Helper()
	if got.ID != want.ID || got.State != want.State || got.Agent != want.Agent ||
		got.Issuer != want.Issuer || got.Template != want.Template || got.Intent != want.Intent ||
		got.EndReason != want.EndReason || !slices.Equal(got.Tools, want.Tools) ||
		!sameMs(got.CreatedAt, want.CreatedAt) || !sameMs(got.Deadline, want.Deadline) ||
		!sameMs(got.EndedAt, want.EndedAt) {
		t.Errorf("task differs:\n got  %+v\n want %+v", got, want)
	}
}

func wantCreds(t *testing.T, got, want []broker.Credential) {
	t.Helper()
	same := len(got) == len(want)
	for i := 0; same && i < len(got); i++ {
		g, w := got[i], want[i]
		same = g.ID == w.ID && g.Kind == w.Kind && g.TaskID == w.TaskID && g.Parent == w.Parent &&
			sameMs(g.IssuedAt, w.IssuedAt) && sameMs(g.ExpiresAt, w.ExpiresAt)
	}
	if !same {
		t.Errorf("credentials differ:\n got  %+v\n want %+v", got, want)
	}
}

// sameMs reports whether a and b agree to the millisecond (both zero counts).
func sameMs(a, b time.Time) bool {
	if a.IsZero() || b.IsZero() {
		return a.IsZero() == b.IsZero()
	}
	return a.Truncate(time.Millisecond).Equal(b.Truncate(time.Millisecond))
}
