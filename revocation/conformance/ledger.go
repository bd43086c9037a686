package conformance

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
	"github.com/valet-dev/valet/internal/testkit"
)

// NewLedger returns an empty ledger that reads the time from clock where it
// reads time at all. It is called once per case.
type NewLedger func(t *testing.T, clock *Clock) broker.Ledger

// ledgerEnv is what every ledger case gets: a fresh ledger and its clock.
type ledgerEnv struct {
	ctx   context.Context
	clock *Clock
	l     broker.Ledger
	o     Options
}

// ledgerCases are the rules of broker.Ledger, one function each.
var ledgerCases = []namedCase[ledgerEnv]{
	{"RecordThenRead", recordThenRead},
	{"RecordWithoutCredentials", recordWithoutCredentials},
	{"ChainRoundTrips", chainRoundTrips},
	{"DuplicateRecordRefused", duplicateRecordRefused},
	{"InvalidRecordRefused", invalidRecordRefused},
	{"UnknownIsNotFound", unknownIsNotFound},
	{"EndDeniesEveryCredential", endDeniesEveryCredential},
	{"EndLeavesOtherTasksAlone", endLeavesOtherTasksAlone},
	{"EndToActiveRefused", endToActiveRefused},
	{"EndTwiceIsNotActive", endTwiceIsNotActive},
	{"EndExactlyOnceUnderConcurrency", endExactlyOnceUnderConcurrency},
	{"DueListsOverdueActiveTasks", dueListsOverdueActiveTasks},
	{"ChildListedUnderParent", childListedUnderParent},
	{"ChildOfEndedParentRefused", childOfEndedParentRefused},
	{"ChildOfUnknownParentRefused", childOfUnknownParentRefused},
	{"ChildListedBeforeParentEndsOrNever", childListedBeforeParentEndsOrNever},
	{"ChildrenOfUnknownIsEmpty", childrenOfUnknownIsEmpty},
	{"ChildrenAreDirectOnly", childrenAreDirectOnly},
	{"RecordsExpireAfterDeadlinePlusRetention", recordsExpireAfterDeadlinePlusRetention},
	{"ReusedIDStartsWithoutChildren", reusedIDStartsWithoutChildren},
	{"DenyLastsUntilCredentialExpiry", denyLastsUntilCredentialExpiry},
	{"RenewMovesDeadlineAndAddsCredentials", renewMovesDeadlineAndAddsCredentials},
	{"RenewRefusesEndedTask", renewRefusesEndedTask},
	{"RenewRefusesStaleDeadline", renewRefusesStaleDeadline},
	{"RenewOfUnknownIsNotFound", renewOfUnknownIsNotFound},
	{"RenewExactlyOnceUnderConcurrency", renewExactlyOnceUnderConcurrency},
	{"RenewedRecordsLiveUntilNewDeadlinePlusRetention", renewedRecordsLiveUntilNewDeadlinePlusRetention},
	{"EndAfterRenewDeniesEveryCredential", endAfterRenewDeniesEveryCredential},
	{"EndManyEndsEachAsEnd", endManyEndsEachAsEnd},
	{"EndManyListsChildren", endManyListsChildren},
	{"EndManyRefusesTooManyOrBadInput", endManyRefusesTooManyOrBadInput},
	{"EndManyExactlyOnceUnderConcurrency", endManyExactlyOnceUnderConcurrency},
}

// Ledger runs the broker.Ledger suite, and the broker.EpochStore and
// incident.JobStore suites on the same ledger unless o says why it is not
// one.
func Ledger(t *testing.T, newLedger NewLedger, o Options) {
	o.check(t)
	setup := func(t *testing.T) ledgerEnv {
		clock := testkit.NewClock(time.Now().Truncate(time.Millisecond))
		return ledgerEnv{ctx: t.Context(), clock: clock, l: newLedger(t, clock), o: o}
	}
	run(t, ledgerCases, setup)
	t.Run("EpochStore", func(t *testing.T) {
		if o.NoEpochs != "" {
			t.Skipf("the ledger keeps no epochs: %s", o.NoEpochs)
		}
		run(t, epochCases, func(t *testing.T) epochEnv {
			e := setup(t)
			s, ok := e.l.(epochLedger)
			if !ok {
				t.Fatalf("%T is not a broker.EpochStore and Options.NoEpochs does not say why", e.l)
			}
			return epochEnv{ledgerEnv: e, s: s}
		})
	})
	t.Run("JobStore", func(t *testing.T) {
		if o.NoJobs != "" {
			t.Skipf("the ledger keeps no jobs: %s", o.NoJobs)
		}
		run(t, jobCases, func(t *testing.T) jobEnv {
			e := setup(t)
			s, ok := e.l.(jobLedger)
			if !ok {
				t.Fatalf("%T is not an incident.JobStore and Options.NoJobs does not say why", e.l)
			}
			return jobEnv{ledgerEnv: e, s: s}
		})
	})
}

// record records a task or fails the test.
func (e ledgerEnv) record(t *testing.T, task broker.Task, creds []broker.Credential) {
	t.Helper()
	if err := e.l.Record(e.ctx, task, creds); err != nil {
		t.Fatalf("Record %s: %v", task.ID, err)
	}
}

// denied reads whether a credential is on the deny list, or fails the test.
func (e ledgerEnv) denied(t *testing.T, id string) bool {
	t.Helper()
	_, d, err := e.l.Credential(e.ctx, id)
	if err != nil {
		t.Fatalf("Credential(%q): %v", id, err)
	}
	return d
}

// children reads a task's children, sorted, or fails the test.
func (e ledgerEnv) children(t *testing.T, id string) []string {
	t.Helper()
	ids, err := e.l.Children(e.ctx, id)
	if err != nil {
		t.Fatalf("Children(%q): %v", id, err)
	}
	slices.Sort(ids)
	return ids
}

// wantGone checks a task and its credentials are not in the ledger.
func (e ledgerEnv) wantGone(t *testing.T, task broker.Task, creds []broker.Credential) {
	t.Helper()
	if _, _, err := e.l.Task(e.ctx, task.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Task(%q): err = %v, want ErrNotFound", task.ID, err)
	}
	for _, c := range creds {
		if _, _, err := e.l.Credential(e.ctx, c.ID); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Credential(%q): err = %v, want ErrNotFound", c.ID, err)
		}
	}
}

// recordThenRead: a task and its credentials come back as recorded (times
// to the millisecond), by task and by credential id; ids with ':' and '%'
// do not bend key names.
func recordThenRead(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "a", 3)
	task.CreatedAt = task.CreatedAt.Add(123 * time.Microsecond)
	task.Intent = "deploy ünïcode: 50% of \"prod\"\n"
	creds[0].ID = "tok:en%3A:" + task.ID
	creds[1].Kind, creds[1].Parent = broker.KindVaultToken, ""
	creds[2].Kind, creds[2].Parent = broker.KindVaultLease, creds[1].ID
	e.record(t, task, creds)
	gotTask, gotCreds, err := e.l.Task(e.ctx, task.ID)
	if err != nil {
		t.Fatalf("Task: %v", err)
	}
	wantTask(t, gotTask, task)
	wantCreds(t, gotCreds, creds)
	for _, c := range creds {
		got, denied, err := e.l.Credential(e.ctx, c.ID)
		if err != nil {
			t.Fatalf("Credential(%q): %v", c.ID, err)
		}
		wantCreds(t, []broker.Credential{got}, []broker.Credential{c})
		if denied {
			t.Errorf("Credential(%q) denied before End", c.ID)
		}
	}
}

// recordWithoutCredentials: a task with no credentials, no tools and no
// creation time is valid.
func recordWithoutCredentials(t *testing.T, e ledgerEnv) {
	bare, _ := newTask(e.clock.Now(), "bare", 0)
	bare.Tools, bare.CreatedAt = nil, time.Time{}
	e.record(t, bare, nil)
	got, creds, err := e.l.Task(e.ctx, bare.ID)
	if err != nil {
		t.Fatalf("Task: %v", err)
	}
	wantTask(t, got, bare)
	if len(creds) != 0 {
		t.Errorf("bare task has credentials %v", creds)
	}
}

// chainRoundTrips: the chain and the user a task acts for come back as
// recorded; incident controls, epochs and bulk jobs read them.
func chainRoundTrips(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "chain", 1)
	task.Agent, task.Issuer = "agent-b", "other-idp"
	task.Subject, task.SubjectIssuer, task.Act = "user-u", "corp-idp", []string{"agent-b", "agent-a"}
	task.Chain = []broker.Link{{Agent: "agent-a", Issuer: "corp-idp"}, {Agent: "agent-b", Issuer: "other-idp"}}
	e.record(t, task, creds)
	got, _, err := e.l.Task(e.ctx, task.ID)
	if err != nil {
		t.Fatalf("Task: %v", err)
	}
	if !slices.Equal(got.Chain, task.Chain) || got.SubjectIssuer != task.SubjectIssuer || got.Subject != task.Subject ||
		!slices.Equal(got.Act, task.Act) || !slices.Equal(got.Links(), task.Links()) {
		t.Errorf("chain differs:\n got  %+v\n want %+v", got, task)
	}
}

// duplicateRecordRefused: a task id or a credential id already recorded is
// refused, and the first record is left untouched.
func duplicateRecordRefused(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
	task, creds := newTask(now, "dup", 2)
	e.record(t, task, creds)

	again := task
	again.Intent = "overwrite"
	againCreds := []broker.Credential{cred(task.ID, "other-"+task.ID, now)}
	if err := e.l.Record(e.ctx, again, againCreds); err == nil {
		t.Fatal("second Record of the same task id succeeded")
	}
	thief, _ := newTask(now, "thief", 0)
	stolen := creds[1]
	stolen.TaskID = thief.ID
	if err := e.l.Record(e.ctx, thief, []broker.Credential{stolen}); err == nil {
		t.Fatal("Record of a new task with a recorded credential id succeeded")
	}

	gotTask, gotCreds, err := e.l.Task(e.ctx, task.ID)
	if err != nil {
		t.Fatalf("Task: %v", err)
	}
	wantTask(t, gotTask, task)
	wantCreds(t, gotCreds, creds)
	if _, _, err := e.l.Task(e.ctx, thief.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("failed Record left task behind: Task err = %v, want ErrNotFound", err)
	}
	for _, id := range []string{againCreds[0].ID, stolen.ID} {
		c, _, err := e.l.Credential(e.ctx, id)
		if errors.Is(err, broker.ErrNotFound) {
			continue
		}
		if err != nil || c.TaskID != task.ID {
			t.Errorf("Credential(%q) = task %q, %v after failed Records; want untouched or absent", id, c.TaskID, err)
		}
	}
}

// invalidRecordRefused: a record the ledger could not keep honestly is
// refused and leaves nothing behind.
func invalidRecordRefused(t *testing.T, e ledgerEnv) {
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
			task, creds := newTask(e.clock.Now(), fmt.Sprint("invalid", i), tt.creds)
			id := task.ID
			tt.edit(&task, creds)
			if err := e.l.Record(e.ctx, task, creds); err == nil {
				t.Fatal("Record succeeded")
			}
			if _, _, err := e.l.Task(e.ctx, id); !errors.Is(err, broker.ErrNotFound) {
				t.Errorf("Task after rejected Record: err = %v, want ErrNotFound", err)
			}
		})
	}
}

// unknownIsNotFound: reading or ending what was never recorded is
// ErrNotFound.
func unknownIsNotFound(t *testing.T, e ledgerEnv) {
	if _, _, err := e.l.Task(e.ctx, "no-such-task"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Task: err = %v, want ErrNotFound", err)
	}
	if _, _, err := e.l.Credential(e.ctx, "no-such-credential"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Credential: err = %v, want ErrNotFound", err)
	}
	if _, _, err := e.l.End(e.ctx, "no-such-task", broker.StateRevoked, "test", e.clock.Now()); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("End: err = %v, want ErrNotFound", err)
	}
}

// endDeniesEveryCredential: End moves the task to its final state with
// reason and time, returns it as stored, and denies every credential.
func endDeniesEveryCredential(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "end", 3)
	creds[0].ID = "urn:jti:100%:" + task.ID // must be denied under its own name
	e.record(t, task, creds)

	e.clock.Advance(time.Minute)
	at := e.clock.Now().Add(456 * time.Microsecond)
	ended, endedCreds, err := e.l.End(e.ctx, task.ID, broker.StateCompleted, "agent done", at)
	if err != nil {
		t.Fatalf("End: %v", err)
	}
	want := task
	want.State, want.EndReason, want.EndedAt = broker.StateCompleted, "agent done", at
	wantTask(t, ended, want)
	wantCreds(t, endedCreds, creds)
	stored, _, err := e.l.Task(e.ctx, task.ID)
	if err != nil {
		t.Fatalf("Task: %v", err)
	}
	wantTask(t, stored, want)
	for _, c := range creds {
		if !e.denied(t, c.ID) {
			t.Errorf("Credential(%q) not denied after End", c.ID)
		}
	}
}

// endLeavesOtherTasksAlone: ending one task touches no other task or
// credential.
func endLeavesOtherTasksAlone(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "ended", 2)
	other, otherCreds := newTask(e.clock.Now(), "bystander", 2)
	e.record(t, task, creds)
	e.record(t, other, otherCreds)
	if _, _, err := e.l.End(e.ctx, task.ID, broker.StateRevoked, "test", e.clock.Now()); err != nil {
		t.Fatalf("End: %v", err)
	}
	got, _, err := e.l.Task(e.ctx, other.ID)
	if err != nil {
		t.Fatalf("Task bystander: %v", err)
	}
	wantTask(t, got, other)
	for _, c := range otherCreds {
		if e.denied(t, c.ID) {
			t.Errorf("bystander Credential(%q) denied", c.ID)
		}
	}
}

// endToActiveRefused: active is not a final state.
func endToActiveRefused(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "not-final", 1)
	e.record(t, task, creds)
	if _, _, err := e.l.End(e.ctx, task.ID, broker.StateActive, "not final", e.clock.Now()); err == nil {
		t.Error("End to the active state succeeded")
	}
	got, _, err := e.l.Task(e.ctx, task.ID)
	if err != nil || got.State != broker.StateActive || e.denied(t, creds[0].ID) {
		t.Errorf("after a refused End: state %s, err %v; want active and not denied", got.State, err)
	}
}

// endTwiceIsNotActive: a second End gets ErrNotActive with the task as
// the first End left it.
func endTwiceIsNotActive(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "twice", 2)
	e.record(t, task, creds)
	first, _, err := e.l.End(e.ctx, task.ID, broker.StateCompleted, "done", e.clock.Now())
	if err != nil {
		t.Fatalf("End: %v", err)
	}
	e.clock.Advance(time.Second)
	again, againCreds, err := e.l.End(e.ctx, task.ID, broker.StateRevoked, "too late", e.clock.Now())
	if !errors.Is(err, broker.ErrNotActive) {
		t.Fatalf("second End: err = %v, want ErrNotActive", err)
	}
	wantTask(t, again, first)
	wantCreds(t, againCreds, creds)
}

// endExactlyOnceUnderConcurrency: of concurrent Ends exactly one wins; the
// others get ErrNotActive, and the stored reason is the winner's.
func endExactlyOnceUnderConcurrency(t *testing.T, e ledgerEnv) {
	task, creds := newTask(e.clock.Now(), "race", 2)
	e.record(t, task, creds)
	const n = 50
	var (
		wg      sync.WaitGroup
		wins    atomic.Int32
		winner  atomic.Value
		start   = make(chan struct{})
		errs    = make(chan error, n)
		endedAt = e.clock.Now()
	)
	for i := range n {
		wg.Go(func() {
			<-start
			reason := fmt.Sprint("racer ", i)
			got, _, err := e.l.End(e.ctx, task.ID, broker.StateRevoked, reason, endedAt)
			switch {
			case err == nil:
				wins.Add(1)
				winner.Store(reason)
			case !errors.Is(err, broker.ErrNotActive):
				errs <- err
			case got.State != broker.StateRevoked:
				errs <- fmt.Errorf("loser got the task in state %s, want it as stored (revoked)", got.State)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("losing End: %v, want ErrNotActive with the stored task", err)
	}
	if got := wins.Load(); got != 1 {
		t.Fatalf("%d of %d concurrent Ends succeeded, want exactly 1", got, n)
	}
	stored, _, err := e.l.Task(e.ctx, task.ID)
	if err != nil {
		t.Fatalf("Task: %v", err)
	}
	if stored.EndReason != winner.Load() {
		t.Errorf("stored end reason %q, want the winner's %q", stored.EndReason, winner.Load())
	}
}

// dueListsOverdueActiveTasks: Due lists active tasks at or past their
// deadline, earliest first, up to the limit; an ended task is not due.
func dueListsOverdueActiveTasks(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
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
		e.record(t, task, creds)
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
			got, err := e.l.Due(e.ctx, now, tt.limit)
			if err != nil {
				t.Fatalf("Due: %v", err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Due(now, %d) = %v, want %v", tt.limit, got, tt.want)
			}
		})
	}
	if _, _, err := e.l.End(e.ctx, ids["late-2"], broker.StateExpired, "deadline", now); err != nil {
		t.Fatalf("End: %v", err)
	}
	got, err := e.l.Due(e.ctx, now, 10)
	if err != nil {
		t.Fatalf("Due: %v", err)
	}
	if want := []string{ids["late-1"], ids["on-time"]}; !slices.Equal(got, want) {
		t.Errorf("Due after End = %v, want %v", got, want)
	}
}

// childListedUnderParent: Record of a child adds it to its parent's
// children in the same write; the child reads back with its parent.
func childListedUnderParent(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
	parent, parentCreds := newTask(now, "parent", 1)
	e.record(t, parent, parentCreds)
	if got := e.children(t, parent.ID); len(got) != 0 {
		t.Fatalf("Children of a new task = %v, want none", got)
	}
	a, aCreds := childOf(now, parent, "child-a", 1)
	b, bCreds := childOf(now, parent, "child-b", 0)
	e.record(t, a, aCreds)
	e.record(t, b, bCreds)
	want := []string{a.ID, b.ID}
	slices.Sort(want)
	if got := e.children(t, parent.ID); !slices.Equal(got, want) {
		t.Errorf("Children(parent) = %v, want %v", got, want)
	}
	got, _, err := e.l.Task(e.ctx, a.ID)
	if err != nil {
		t.Fatalf("Task child: %v", err)
	}
	wantTask(t, got, a)
	// Ending the parent does not forget its children: revocation walks
	// them after the parent ended.
	if _, _, err := e.l.End(e.ctx, parent.ID, broker.StateRevoked, "test", now); err != nil {
		t.Fatalf("End parent: %v", err)
	}
	if got := e.children(t, parent.ID); !slices.Equal(got, want) {
		t.Errorf("Children(parent) after it ended = %v, want %v", got, want)
	}
}

// childOfEndedParentRefused: Record of a child whose parent has ended is
// refused with ErrNotActive and leaves nothing: no task, no credential, no
// entry among the parent's children.
func childOfEndedParentRefused(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
	parent, parentCreds := newTask(now, "ended-parent", 1)
	e.record(t, parent, parentCreds)
	if _, _, err := e.l.End(e.ctx, parent.ID, broker.StateRevoked, "test", now); err != nil {
		t.Fatalf("End parent: %v", err)
	}
	child, childCreds := childOf(now, parent, "orphan", 2)
	e.wantChildRefused(t, child, childCreds, "an ended parent")
}

// childOfUnknownParentRefused: a parent the ledger does not hold is not
// active either.
func childOfUnknownParentRefused(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
	ghost, _ := newTask(now, "ghost", 0)
	child, childCreds := childOf(now, ghost, "of-ghost", 1)
	e.wantChildRefused(t, child, childCreds, "an unknown parent")
}

// wantChildRefused records child and wants it refused with ErrNotActive,
// leaving no record of it and no entry in its parent's children.
func (e ledgerEnv) wantChildRefused(t *testing.T, child broker.Task, creds []broker.Credential, parentIs string) {
	t.Helper()
	if err := e.l.Record(e.ctx, child, creds); !errors.Is(err, broker.ErrNotActive) {
		t.Fatalf("Record of a child of %s: err = %v, want ErrNotActive", parentIs, err)
	}
	e.wantGone(t, child, creds)
	if got := e.children(t, child.Parent); len(got) != 0 {
		t.Errorf("Children of %s = %v after a refused child, want none", parentIs, got)
	}
}

// childListedBeforeParentEndsOrNever: with children recorded while their
// parent ends, each child is either recorded and listed (and the list does
// not grow once End returned) or refused with ErrNotActive and absent.
func childListedBeforeParentEndsOrNever(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
	parent, parentCreds := newTask(now, "racing-parent", 1)
	e.record(t, parent, parentCreds)
	const n = 40
	kids := make([]broker.Task, n)
	kidCreds := make([][]broker.Credential, n)
	for i := range kids {
		kids[i], kidCreds[i] = childOf(now, parent, fmt.Sprint("kid", i), 1)
	}
	var (
		wg        sync.WaitGroup
		start     = make(chan struct{})
		recorded  = make([]bool, n)
		atEnd     []string
		endErr    error
		errs      = make(chan error, n)
		listedErr error
	)
	for i := range kids {
		wg.Go(func() {
			<-start
			switch err := e.l.Record(e.ctx, kids[i], kidCreds[i]); {
			case err == nil:
				recorded[i] = true
			case !errors.Is(err, broker.ErrNotActive):
				errs <- fmt.Errorf("Record %s: %w", kids[i].ID, err)
			}
		})
	}
	wg.Go(func() {
		<-start
		if _, _, endErr = e.l.End(e.ctx, parent.ID, broker.StateRevoked, "race", now); endErr != nil {
			return
		}
		atEnd, listedErr = e.l.Children(e.ctx, parent.ID)
	})
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("%v, want success or ErrNotActive", err)
	}
	if endErr != nil || listedErr != nil {
		t.Fatalf("End: %v; Children: %v", endErr, listedErr)
	}
	slices.Sort(atEnd)
	var want []string
	for i, ok := range recorded {
		if ok {
			want = append(want, kids[i].ID)
		} else {
			e.wantGone(t, kids[i], kidCreds[i])
		}
	}
	slices.Sort(want)
	if got := e.children(t, parent.ID); !slices.Equal(got, want) {
		t.Errorf("Children(parent) = %v, want exactly the recorded children %v", got, want)
	}
	if !slices.Equal(atEnd, want) {
		t.Errorf("Children(parent) right after End = %v, but children recorded in all = %v: one was recorded after its parent ended", atEnd, want)
	}
}

// childrenOfUnknownIsEmpty: Children of a task never recorded is empty,
// not an error.
func childrenOfUnknownIsEmpty(t *testing.T, e ledgerEnv) {
	if got := e.children(t, "no-such-task"); len(got) != 0 {
		t.Errorf("Children(unknown) = %v, want none", got)
	}
}

// childrenAreDirectOnly: a grandchild is its parent's child, not its
// grandparent's.
func childrenAreDirectOnly(t *testing.T, e ledgerEnv) {
	now := e.clock.Now()
	root, _ := newTask(now, "root", 0)
	e.record(t, root, nil)
	mid, _ := childOf(now, root, "mid", 0)
	e.record(t, mid, nil)
	leaf, _ := childOf(now, mid, "leaf", 0)
	e.record(t, leaf, nil)
	if got := e.children(t, root.ID); !slices.Equal(got, []string{mid.ID}) {
		t.Errorf("Children(root) = %v, want [%s]", got, mid.ID)
	}
	if got := e.children(t, mid.ID); !slices.Equal(got, []string{leaf.ID}) {
		t.Errorf("Children(mid) = %v, want [%s]", got, leaf.ID)
	}
	if got := e.children(t, leaf.ID); len(got) != 0 {
		t.Errorf("Children(leaf) = %v, want none", got)
	}
}

// recordsExpireAfterDeadlinePlusRetention: a task's records stay readable
// until its deadline plus the retention, then vanish (Due included), and
// the ids are free again.
func recordsExpireAfterDeadlinePlusRetention(t *testing.T, e ledgerEnv) {
	e.o.needClockExpiry(t)
	task, creds := newTask(e.clock.Now(), "expiry", 1)
	e.record(t, task, creds)
	child, _ := childOf(e.clock.Now(), task, "expiring-child", 0)
	e.record(t, child, nil)
	e.clock.Advance(task.Deadline.Sub(e.clock.Now()) + e.o.Retention)
	if _, _, err := e.l.Task(e.ctx, task.ID); err != nil {
		t.Fatalf("Task at deadline+retention: %v", err)
	}
	if ids, err := e.l.Due(e.ctx, e.clock.Now(), 10); err != nil || !slices.Contains(ids, task.ID) {
		t.Fatalf("Due at deadline+retention = %v, %v; want the task", ids, err)
	}
	e.clock.Advance(time.Millisecond)
	e.wantGone(t, task, creds)
	if ids, err := e.l.Due(e.ctx, e.clock.Now(), 10); err != nil || len(ids) != 0 {
		t.Errorf("Due after deadline+retention = %v, %v; want none", ids, err)
	}
	if got := e.children(t, task.ID); len(got) != 0 {
		t.Errorf("Children after deadline+retention = %v, want none", got)
	}
	task.Deadline = e.clock.Now().Add(time.Hour)
	creds[0].ExpiresAt = task.Deadline
	if err := e.l.Record(e.ctx, task, creds); err != nil {
		t.Errorf("Record after expiry: %v", err)
	}
}

// reusedIDStartsWithoutChildren: once a task's records are gone, a new
// task recorded under its id has no children, however soon it comes.
func reusedIDStartsWithoutChildren(t *testing.T, e ledgerEnv) {
	e.o.needClockExpiry(t)
	parent, _ := newTask(e.clock.Now(), "reused", 0)
	e.record(t, parent, nil)
	child, _ := childOf(e.clock.Now(), parent, "of-reused", 0)
	e.record(t, child, nil)
	// Another write just before the parent's records expire, so a store
	// that cleans up on writes has just done so.
	e.clock.Advance(parent.Deadline.Sub(e.clock.Now()) + e.o.Retention)
	other, _ := newTask(e.clock.Now(), "other", 0)
	e.record(t, other, nil)
	e.clock.Advance(time.Millisecond)
	again := parent
	again.CreatedAt, again.Deadline = e.clock.Now(), e.clock.Now().Add(time.Hour)
	e.record(t, again, nil)
	if got := e.children(t, again.ID); len(got) != 0 {
		t.Errorf("Children of a new task under a reused id = %v, want none (the old task's children)", got)
	}
}

// denyLastsUntilCredentialExpiry: a deny entry lasts until the credential
// expires, and at least a second (a credential already expired at End).
func denyLastsUntilCredentialExpiry(t *testing.T, e ledgerEnv) {
	e.o.needClockExpiry(t)
	task, creds := newTask(e.clock.Now(), "deny", 2)
	creds[0].ExpiresAt = e.clock.Now().Add(10 * time.Minute)
	creds[1].ExpiresAt = e.clock.Now().Add(-time.Minute) // already expired
	e.record(t, task, creds)
	if _, _, err := e.l.End(e.ctx, task.ID, broker.StateRevoked, "test", e.clock.Now()); err != nil {
		t.Fatalf("End: %v", err)
	}
	if !e.denied(t, creds[0].ID) || !e.denied(t, creds[1].ID) {
		t.Fatal("credentials not denied right after End")
	}
	e.clock.Advance(time.Second)
	if !e.denied(t, creds[0].ID) || !e.denied(t, creds[1].ID) {
		t.Error("deny entries gone before one second")
	}
	e.clock.Advance(time.Millisecond)
	if e.denied(t, creds[1].ID) {
		t.Error("deny entry of an expired credential outlived its one-second floor")
	}
	e.clock.Advance(creds[0].ExpiresAt.Sub(e.clock.Now()))
	if !e.denied(t, creds[0].ID) {
		t.Error("deny entry gone before the credential expired")
	}
	e.clock.Advance(time.Millisecond)
	if e.denied(t, creds[0].ID) {
		t.Error("deny entry outlived the credential")
	}
}
