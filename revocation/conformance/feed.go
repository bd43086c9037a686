package conformance

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
)

// NewFeed returns an empty ledger, reading the time from clock where it
// reads time at all, and the revocation feed its Ends are published on. It
// is called once per case.
type NewFeed func(t *testing.T, clock *Clock) (broker.Ledger, broker.Feed)

type feedEnv struct {
	ledgerEnv
	f broker.Feed
}

// feedCases are the rules of broker.Feed, one function each.
var feedCases = []namedCase[feedEnv]{
	{"EmptyFeed", emptyFeed},
	{"EndPublishesEveryJWT", endPublishesEveryJWT},
	{"EndManyPublishesEveryJWT", endManyPublishesEveryJWT},
	{"SnapshotLeavesOutExpired", snapshotLeavesOutExpired},
	{"FollowFromCursorSeesLaterEnds", followFromCursorSeesLaterEnds},
	{"FollowFromNowSkipsThePast", followFromNowSkipsThePast},
	{"FollowWakesOnEnd", followWakesOnEnd},
	{"BadCursorInvalid", badCursorInvalid},
}

// Feed runs the broker.Feed suite.
func Feed(t *testing.T, newFeed NewFeed) {
	run(t, feedCases, func(t *testing.T) feedEnv {
		clock := testkit.NewClock(time.Now().Truncate(time.Millisecond))
		l, f := newFeed(t, clock)
		return feedEnv{ledgerEnv: ledgerEnv{ctx: t.Context(), clock: clock, l: l}, f: f}
	})
}

// end records a task with creds and ends it, or fails the test.
func (e feedEnv) end(t *testing.T, task broker.Task, creds []broker.Credential) {
	t.Helper()
	e.record(t, task, creds)
	if _, _, err := e.l.End(e.ctx, task.ID, broker.StateRevoked, "test", e.clock.Now()); err != nil {
		t.Fatalf("End %s: %v", task.ID, err)
	}
}

func (e feedEnv) snapshot(t *testing.T, now time.Time) ([]broker.FeedEntry, string) {
	t.Helper()
	entries, cursor, err := e.f.Snapshot(e.ctx, now)
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return entries, cursor
}

// jtis are the credential ids of entries, sorted.
func jtis(entries []broker.FeedEntry) []string {
	var out []string
	for _, e := range entries {
		if e.JTI != "" {
			out = append(out, e.JTI)
		}
	}
	slices.Sort(out)
	return out
}

func idsOf(creds ...broker.Credential) []string {
	var out []string
	for _, c := range creds {
		out = append(out, c.ID)
	}
	slices.Sort(out)
	return out
}

// emptyFeed: a feed nothing was published on has no entries, and a
// cursor to follow from.
func emptyFeed(t *testing.T, e feedEnv) {
	entries, cursor := e.snapshot(t, e.clock.Now())
	if len(entries) != 0 || cursor == "" {
		t.Fatalf("Snapshot = %v, cursor %q; want none and a cursor", entries, cursor)
	}
	got, next, err := e.f.Follow(e.ctx, cursor, 50*time.Millisecond)
	if err != nil || len(got) != 0 || next != cursor {
		t.Errorf("Follow(%q) = %v, %q, %v; want nothing and the same cursor", cursor, got, next, err)
	}
}

// endPublishesEveryJWT: End puts each JWT of the task on the feed with its
// task and expiry (to the second); other kinds are killed at their source
// and not announced.
func endPublishesEveryJWT(t *testing.T, e feedEnv) {
	task, creds := newTask(e.clock.Now(), "feed", 3)
	creds[2].Kind = broker.KindVaultToken
	e.end(t, task, creds)
	entries, _ := e.snapshot(t, e.clock.Now())
	if got, want := jtis(entries), idsOf(creds[0], creds[1]); !slices.Equal(got, want) {
		t.Fatalf("Snapshot JTIs = %v, want the JWTs %v", got, want)
	}
	for _, en := range entries {
		if en.Epoch != nil {
			continue // the store's own epochs (a new generation's) may be listed too
		}
		if en.TaskID != task.ID || !en.Exp.Equal(creds[0].ExpiresAt.Truncate(time.Second)) {
			t.Errorf("entry %+v, want task %s and exp %v", en, task.ID, creds[0].ExpiresAt.Truncate(time.Second))
		}
	}
}

// endManyPublishesEveryJWT: EndMany puts each JWT of every task it ends
// on the feed, as End does.
func endManyPublishesEveryJWT(t *testing.T, e feedEnv) {
	a, aCreds := newTask(e.clock.Now(), "feed-many-a", 2)
	b, bCreds := newTask(e.clock.Now(), "feed-many-b", 2)
	bCreds[1].Kind = broker.KindVaultToken
	e.record(t, a, aCreds)
	e.record(t, b, bCreds)
	if _, err := e.l.EndMany(e.ctx, []string{a.ID, b.ID}, broker.StateRevoked, "bulk", e.clock.Now()); err != nil {
		t.Fatalf("EndMany: %v", err)
	}
	entries, _ := e.snapshot(t, e.clock.Now())
	if got, want := jtis(entries), idsOf(aCreds[0], aCreds[1], bCreds[0]); !slices.Equal(got, want) {
		t.Fatalf("Snapshot JTIs = %v, want the JWTs %v", got, want)
	}
}

// snapshotLeavesOutExpired: a revoked credential that has expired by the
// snapshot's time is not listed.
func snapshotLeavesOutExpired(t *testing.T, e feedEnv) {
	task, creds := newTask(e.clock.Now(), "feed-exp", 2)
	creds[0].ExpiresAt = e.clock.Now().Add(time.Minute)
	creds[1].ExpiresAt = e.clock.Now().Add(time.Hour)
	e.end(t, task, creds)
	entries, _ := e.snapshot(t, e.clock.Now().Add(2*time.Minute))
	if got := jtis(entries); !slices.Equal(got, idsOf(creds[1])) {
		t.Errorf("Snapshot two minutes on = %v, want only %v", got, creds[1].ID)
	}
}

// followFromCursorSeesLaterEnds: Follow from a snapshot's cursor returns
// what was published after it, and a cursor that returns nothing more.
func followFromCursorSeesLaterEnds(t *testing.T, e feedEnv) {
	before, beforeCreds := newTask(e.clock.Now(), "feed-before", 1)
	e.end(t, before, beforeCreds)
	_, cursor := e.snapshot(t, e.clock.Now())
	after, afterCreds := newTask(e.clock.Now(), "feed-after", 2)
	e.end(t, after, afterCreds)
	got, next, err := e.f.Follow(e.ctx, cursor, time.Second)
	if err != nil {
		t.Fatalf("Follow: %v", err)
	}
	if ids := jtis(got); !slices.Equal(ids, idsOf(afterCreds...)) {
		t.Fatalf("Follow(snapshot cursor) = %v, want %v", ids, idsOf(afterCreds...))
	}
	if more, _, err := e.f.Follow(e.ctx, next, 50*time.Millisecond); err != nil || len(more) != 0 {
		t.Errorf("Follow(next) = %v, %v; want nothing more", more, err)
	}
}

// followFromNowSkipsThePast: Follow with no cursor starts from now.
func followFromNowSkipsThePast(t *testing.T, e feedEnv) {
	task, creds := newTask(e.clock.Now(), "feed-past", 1)
	e.end(t, task, creds)
	if got, _, err := e.f.Follow(e.ctx, "", 50*time.Millisecond); err != nil || len(got) != 0 {
		t.Errorf("Follow(\"\") = %v, %v; want nothing from before", got, err)
	}
}

// followWakesOnEnd: a Follow waiting on the feed returns the entries of an
// End made while it waits, without waiting its time out. (A store may
// publish entries of its own, such as a new generation's epoch; they are
// followed past.)
func followWakesOnEnd(t *testing.T, e feedEnv) {
	_, cursor := e.snapshot(t, e.clock.Now())
	const wait = 20 * time.Second
	ctx, cancel := context.WithTimeout(e.ctx, 2*wait)
	defer cancel()
	done := make(chan error, 1)
	var got []string
	go func() {
		for {
			entries, next, err := e.f.Follow(ctx, cursor, wait)
			switch {
			case err != nil:
				done <- err
				return
			case len(entries) == 0:
				done <- errors.New("Follow waited its time out: the End did not wake it")
				return
			}
			cursor = next
			if got = jtis(entries); len(got) > 0 {
				done <- nil
				return
			}
		}
	}()
	task, creds := newTask(e.clock.Now(), "feed-wake", 1)
	e.end(t, task, creds)
	if err := <-done; err != nil || !slices.Equal(got, idsOf(creds...)) {
		t.Errorf("waiting Follow = %v, %v; want %v", got, err, creds[0].ID)
	}
}

// badCursorInvalid: a cursor that is not a stream id is the caller's
// error.
func badCursorInvalid(t *testing.T, e feedEnv) {
	_, _, err := e.f.Follow(e.ctx, "not-a-cursor", 50*time.Millisecond)
	if broker.ErrorCode(err) != broker.CodeInvalid {
		t.Errorf("Follow(bad cursor): err = %v, want an invalid-request error", err)
	}
}
