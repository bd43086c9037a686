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

// NewRecords returns an empty store that reads the time from clock where it
// reads time at all. It is called once per case.
type NewRecords func(t *testing.T, clock *Clock) broker.Records

type recordsEnv struct {
	ctx   context.Context
	clock *Clock
	s     broker.Records
	o     Options
	until time.Time // an hour from the clock's start
}

// recordsCases are the rules of broker.Records, one function each.
var recordsCases = []namedCase[recordsEnv]{
	{"PutThenGet", putThenGet},
	{"PutOfTakenIDIsExists", putOfTakenIDIsExists},
	{"KindsAreApart", kindsAreApart},
	{"SwapExactlyOnce", swapExactlyOnce},
	{"SwapOfChangedRecordIsNotActive", swapOfChangedRecordIsNotActive},
	{"SwapOfMissingIsNotFound", swapOfMissingIsNotFound},
	{"ListByKindUpToLimit", listByKindUpToLimit},
	{"AppendUpToMaxOldestFirst", appendUpToMaxOldestFirst},
	{"ItemsOfNothingIsEmpty", itemsOfNothingIsEmpty},
	{"HoldCapsASetUnderConcurrency", holdCapsASetUnderConcurrency},
	{"HoldRenewsAHeldMember", holdRenewsAHeldMember},
	{"ReleaseFreesAPlace", releaseFreesAPlace},
	{"ExpiredMemberFreesItsPlace", expiredMemberFreesItsPlace},
	{"RecordsExpireAtTheirTime", recordsExpireAtTheirTime},
	{"SwapKeepsExpiry", swapKeepsExpiry},
	{"ListLivesUntilItsLatestTime", listLivesUntilItsLatestTime},
}

// Records runs the broker.Records suite.
func Records(t *testing.T, newStore NewRecords, o Options) {
	o.check(t)
	run(t, recordsCases, func(t *testing.T) recordsEnv {
		clock := testkit.NewClock(time.Now().Truncate(time.Millisecond))
		return recordsEnv{ctx: t.Context(), clock: clock, s: newStore(t, clock), o: o, until: clock.Now().Add(time.Hour)}
	})
}

// putThenGet: a record reads back as put.
func putThenGet(t *testing.T, e recordsEnv) {
	must(t, e.s.Put(e.ctx, "approval", "a:1", []byte(`{"x":1}`), e.until))
	if b, err := e.s.Get(e.ctx, "approval", "a:1"); err != nil || string(b) != `{"x":1}` {
		t.Fatalf("Get = %s, %v", b, err)
	}
	if _, err := e.s.Get(e.ctx, "approval", "a:2"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Get of an id never put: %v, want ErrNotFound", err)
	}
}

// putOfTakenIDIsExists: Put never overwrites.
func putOfTakenIDIsExists(t *testing.T, e recordsEnv) {
	must(t, e.s.Put(e.ctx, "approval", "a", []byte("first"), e.until))
	if err := e.s.Put(e.ctx, "approval", "a", []byte("second"), e.until); !errors.Is(err, broker.ErrExists) {
		t.Fatalf("second Put: %v, want ErrExists", err)
	}
	if b, err := e.s.Get(e.ctx, "approval", "a"); err != nil || string(b) != "first" {
		t.Errorf("Get after a refused Put = %s, %v; want first", b, err)
	}
}

// kindsAreApart: the same id under two kinds names two records.
func kindsAreApart(t *testing.T, e recordsEnv) {
	must(t, e.s.Put(e.ctx, "approval", "x", []byte("approval"), e.until))
	if _, err := e.s.Get(e.ctx, "action", "x"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get under another kind: %v, want ErrNotFound", err)
	}
	must(t, e.s.Put(e.ctx, "action", "x", []byte("action"), e.until))
	if b, _ := e.s.Get(e.ctx, "approval", "x"); string(b) != "approval" {
		t.Errorf("Get approval x = %s after putting action x", b)
	}
}

// swapExactlyOnce: of concurrent swaps from one old value exactly one
// wins; the others get ErrNotActive, and the winner's value is stored.
func swapExactlyOnce(t *testing.T, e recordsEnv) {
	must(t, e.s.Put(e.ctx, "approval", "b", []byte("pending"), e.until))
	var (
		wins   atomic.Int64
		winner atomic.Value
		wg     sync.WaitGroup
	)
	for i := range 16 {
		wg.Go(func() {
			next := fmt.Sprint("decided-", i)
			switch err := e.s.Swap(e.ctx, "approval", "b", []byte("pending"), []byte(next)); {
			case err == nil:
				wins.Add(1)
				winner.Store(next)
			case !errors.Is(err, broker.ErrNotActive):
				t.Errorf("Swap: %v, want nil or ErrNotActive", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d swaps won, want 1", wins.Load())
	}
	if b, err := e.s.Get(e.ctx, "approval", "b"); err != nil || string(b) != winner.Load() {
		t.Errorf("Get = %s, %v; want the winner's %v", b, err, winner.Load())
	}
}

// swapOfChangedRecordIsNotActive: a Swap whose old value no longer matches
// changes nothing.
func swapOfChangedRecordIsNotActive(t *testing.T, e recordsEnv) {
	must(t, e.s.Put(e.ctx, "approval", "c", []byte("approved"), e.until))
	if err := e.s.Swap(e.ctx, "approval", "c", []byte("pending"), []byte("denied")); !errors.Is(err, broker.ErrNotActive) {
		t.Fatalf("Swap from a stale value: %v, want ErrNotActive", err)
	}
	if b, _ := e.s.Get(e.ctx, "approval", "c"); string(b) != "approved" {
		t.Errorf("Get = %s after a refused Swap, want approved", b)
	}
}

// swapOfMissingIsNotFound: Swap does not create.
func swapOfMissingIsNotFound(t *testing.T, e recordsEnv) {
	if err := e.s.Swap(e.ctx, "approval", "none", []byte("x"), []byte("y")); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Swap of a missing record: %v, want ErrNotFound", err)
	}
	if _, err := e.s.Get(e.ctx, "approval", "none"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Get after a refused Swap: %v, want ErrNotFound", err)
	}
}

// listByKindUpToLimit: List returns the records of one kind, at most limit.
func listByKindUpToLimit(t *testing.T, e recordsEnv) {
	for _, id := range []string{"1", "2", "3"} {
		must(t, e.s.Put(e.ctx, "approval", id, []byte("r"+id), e.until))
	}
	must(t, e.s.Put(e.ctx, "action", "9", []byte("other"), e.until))
	got, err := e.s.List(e.ctx, "approval", 100)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range got {
		names = append(names, string(b))
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"r1", "r2", "r3"}) {
		t.Fatalf("List = %v, want [r1 r2 r3]", names)
	}
	if got, err := e.s.List(e.ctx, "approval", 2); err != nil || len(got) != 2 {
		t.Errorf("List with limit 2 gave %d, %v", len(got), err)
	}
}

// appendUpToMaxOldestFirst: a list takes max items, then refuses with
// ErrExists; Items returns them oldest first, up to limit.
func appendUpToMaxOldestFirst(t *testing.T, e recordsEnv) {
	for i := range 3 {
		must(t, e.s.Append(e.ctx, "event", "tsk", []byte(fmt.Sprint(i)), e.until, 3))
	}
	if err := e.s.Append(e.ctx, "event", "tsk", []byte("4"), e.until, 3); !errors.Is(err, broker.ErrExists) {
		t.Fatalf("Append to a full list: %v, want ErrExists", err)
	}
	items, err := e.s.Items(e.ctx, "event", "tsk", 10)
	if err != nil || len(items) != 3 || string(items[0]) != "0" || string(items[2]) != "2" {
		t.Fatalf("Items = %q, %v; want 0 1 2", items, err)
	}
	if items, err := e.s.Items(e.ctx, "event", "tsk", 2); err != nil || len(items) != 2 || string(items[0]) != "0" {
		t.Errorf("Items with limit 2 = %q, %v; want 0 1", items, err)
	}
}

// itemsOfNothingIsEmpty: a list never appended to is empty, not an error.
func itemsOfNothingIsEmpty(t *testing.T, e recordsEnv) {
	if items, err := e.s.Items(e.ctx, "event", "none", 10); err != nil || len(items) != 0 {
		t.Fatalf("Items of nothing = %q, %v", items, err)
	}
}

// holdCapsASetUnderConcurrency: of concurrent Holds on a set of max places,
// exactly max win; another set is its own.
func holdCapsASetUnderConcurrency(t *testing.T, e recordsEnv) {
	var (
		wins atomic.Int64
		wg   sync.WaitGroup
	)
	for i := range 16 {
		wg.Go(func() {
			switch err := e.s.Hold(e.ctx, "approval-pending", "tsk", fmt.Sprint("apr", i), e.until, 3); {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, broker.ErrExists):
				t.Errorf("Hold: %v, want nil or ErrExists", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 3 {
		t.Fatalf("%d of 16 concurrent Holds won 3 places", wins.Load())
	}
	if err := e.s.Hold(e.ctx, "approval-pending", "other", "apr0", e.until, 3); err != nil {
		t.Errorf("another set is its own: %v", err)
	}
}

// holdRenewsAHeldMember: holding a member already held succeeds in a full
// set.
func holdRenewsAHeldMember(t *testing.T, e recordsEnv) {
	for _, m := range []string{"a", "b"} {
		must(t, e.s.Hold(e.ctx, "approval-pending", "tsk", m, e.until, 2))
	}
	if err := e.s.Hold(e.ctx, "approval-pending", "tsk", "a", e.until, 2); err != nil {
		t.Fatalf("renewing a held member of a full set: %v", err)
	}
	if err := e.s.Hold(e.ctx, "approval-pending", "tsk", "c", e.until, 2); !errors.Is(err, broker.ErrExists) {
		t.Errorf("Hold in a full set: %v, want ErrExists", err)
	}
}

// releaseFreesAPlace: Release of a held member frees its place; of one not
// held is not an error.
func releaseFreesAPlace(t *testing.T, e recordsEnv) {
	must(t, e.s.Release(e.ctx, "approval-pending", "tsk", "nobody"))
	must(t, e.s.Hold(e.ctx, "approval-pending", "tsk", "a", e.until, 1))
	if err := e.s.Hold(e.ctx, "approval-pending", "tsk", "b", e.until, 1); !errors.Is(err, broker.ErrExists) {
		t.Fatalf("Hold in a full set: %v, want ErrExists", err)
	}
	must(t, e.s.Release(e.ctx, "approval-pending", "tsk", "a"))
	if err := e.s.Hold(e.ctx, "approval-pending", "tsk", "b", e.until, 1); err != nil {
		t.Errorf("Hold after Release: %v", err)
	}
}

// expiredMemberFreesItsPlace: a member whose time has passed no longer
// counts.
func expiredMemberFreesItsPlace(t *testing.T, e recordsEnv) {
	must(t, e.s.Hold(e.ctx, "approval-pending", "old", "x", e.clock.Now().Add(-time.Second), 1))
	if err := e.s.Hold(e.ctx, "approval-pending", "old", "y", e.until, 1); err != nil {
		t.Errorf("Hold where the only member expired: %v", err)
	}
}

// recordsExpireAtTheirTime: a record vanishes when its time passes, and
// its id is free again.
func recordsExpireAtTheirTime(t *testing.T, e recordsEnv) {
	e.o.needClockExpiry(t)
	must(t, e.s.Put(e.ctx, "action", "x", []byte("1"), e.clock.Now().Add(time.Minute)))
	e.clock.Advance(time.Minute)
	if _, err := e.s.Get(e.ctx, "action", "x"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get of an expired record: %v, want ErrNotFound", err)
	}
	if err := e.s.Put(e.ctx, "action", "x", []byte("2"), e.clock.Now().Add(time.Minute)); err != nil {
		t.Errorf("Put over an expired record: %v", err)
	}
}

// swapKeepsExpiry: a swapped record expires when the one it replaced
// would have.
func swapKeepsExpiry(t *testing.T, e recordsEnv) {
	e.o.needClockExpiry(t)
	must(t, e.s.Put(e.ctx, "approval", "s", []byte("pending"), e.clock.Now().Add(time.Minute)))
	e.clock.Advance(30 * time.Second)
	must(t, e.s.Swap(e.ctx, "approval", "s", []byte("pending"), []byte("approved")))
	e.clock.Advance(30 * time.Second)
	if _, err := e.s.Get(e.ctx, "approval", "s"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Get of a swapped record past its first expiry: %v, want ErrNotFound", err)
	}
	if got, err := e.s.List(e.ctx, "approval", 10); err != nil || len(got) != 0 {
		t.Errorf("List past its expiry = %q, %v; want none", got, err)
	}
}

// listLivesUntilItsLatestTime: a list lives until the latest time any
// Append gave, then is gone (and takes max items again).
func listLivesUntilItsLatestTime(t *testing.T, e recordsEnv) {
	e.o.needClockExpiry(t)
	now := e.clock.Now()
	must(t, e.s.Append(e.ctx, "event", "l", []byte("0"), now.Add(2*time.Minute), 2))
	must(t, e.s.Append(e.ctx, "event", "l", []byte("1"), now.Add(time.Minute), 2))
	e.clock.Advance(time.Minute + time.Millisecond)
	if items, err := e.s.Items(e.ctx, "event", "l", 10); err != nil || len(items) != 2 {
		t.Fatalf("Items between the two times = %q, %v; want both (the later time holds)", items, err)
	}
	e.clock.Advance(time.Minute)
	if items, err := e.s.Items(e.ctx, "event", "l", 10); err != nil || len(items) != 0 {
		t.Fatalf("Items past the latest time = %q, %v; want none", items, err)
	}
	if err := e.s.Append(e.ctx, "event", "l", []byte("2"), e.clock.Now().Add(time.Minute), 2); err != nil {
		t.Errorf("Append to an expired full list: %v", err)
	}
}
