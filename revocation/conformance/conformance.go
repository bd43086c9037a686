// Package conformance is the one conformance suite of the stores behind
// broker's ports (Ledger and its epochs and jobs, Records, RevocationQueue,
// Feed, ControlStore): one exported entry point per store interface, one
// named function per rule, so the Redis and in-memory stores keep one
// contract and a failure names the rule broken.
package conformance

import (
	"cmp"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
)

// Clock is the settable fake clock the suite hands each store: testkit's
// one fake clock, under a name a store outside this module can write.
type Clock = testkit.Clock

// Options says what the store under test can show beyond the common part of
// the contract. A case that needs a capability the store lacks is skipped
// with the reason given here; a missing reason fails the suite, so nothing
// is ever skipped silently.
type Options struct {
	// ClockDrivesExpiry: the store expires records by the Clock it was
	// given, so the suite tests expiry (records after deadline plus
	// retention, deny entries after the credential's expiry) by advancing
	// it.
	ClockDrivesExpiry bool
	// Retention is the retention the store was built with; needed when
	// ClockDrivesExpiry is set.
	Retention time.Duration
	// RealClockExpiry names where a store that expires by a real clock
	// (Redis TTLs) has its expiry tested instead; required when
	// ClockDrivesExpiry is false.
	RealClockExpiry string
	// NoEpochs says why the ledger is not a broker.EpochStore; empty means
	// it must be one, and the epoch cases run on it.
	NoEpochs string
	// NoJobs says why the ledger is not an incident.JobStore; empty means it
	// must be one, and the job cases run on it.
	NoJobs string
	// NoReapLeases says why the DueEnder keeps no leases on the batches it
	// ends (AckReaped and Unaudited do nothing); empty means it keeps them
	// for ReapLease, and the lease cases run.
	NoReapLeases string
	// ReapLease is the reap lease the DueEnder was built with, at most a
	// second: the lease cases wait it out on the store's real clock.
	ReapLease time.Duration
}

// check fails the suite on options that contradict themselves.
func (o Options) check(t *testing.T) {
	t.Helper()
	switch {
	case o.ClockDrivesExpiry && o.Retention <= 0:
		t.Fatal("conformance: Options.Retention must be set with ClockDrivesExpiry")
	case !o.ClockDrivesExpiry && o.RealClockExpiry == "":
		t.Fatal("conformance: Options.RealClockExpiry must say where expiry is tested when the Clock does not drive it")
	}
}

// needClockExpiry skips a case that advances the clock to expire records,
// saying where the store's expiry is tested instead.
func (o Options) needClockExpiry(t *testing.T) {
	t.Helper()
	if !o.ClockDrivesExpiry {
		t.Skipf("the store expires by a real clock; its expiry is tested by %s", o.RealClockExpiry)
	}
}

// run runs each case as a named subtest.
func run[S any](t *testing.T, cases []namedCase[S], setup func(t *testing.T) S) {
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, setup(t)) })
	}
}

type namedCase[S any] struct {
	name string
	fn   func(*testing.T, S)
}

var seq atomic.Uint64

// newTask returns an active task due in an hour, and n JWTs of it. Ids are
// unique within the process.
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

// childOf returns an active task delegated from parent, with n JWTs.
func childOf(now time.Time, parent broker.Task, name string, n int) (broker.Task, []broker.Credential) {
	t, creds := newTask(now, name, n)
	t.Parent, t.Root, t.Depth = parent.ID, cmp.Or(parent.Root, parent.ID), parent.Depth+1
	t.Deadline = parent.Deadline
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
		got.EndReason != want.EndReason || got.Parent != want.Parent || got.Root != want.Root || got.Depth != want.Depth || !slices.Equal(got.Tools, want.Tools) ||
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

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
