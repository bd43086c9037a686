package conformance

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
)

// NewLimiter returns an empty limiter that reads the time from clock where
// it reads time at all. It is called once per case.
type NewLimiter func(t *testing.T, clock *Clock) broker.Limiter

type limiterEnv struct {
	ctx   context.Context
	clock *Clock
	l     broker.Limiter
	o     Options
	until time.Time
}

// limiterCases are the rules of broker.Limiter, one function each.
var limiterCases = []namedCase[limiterEnv]{
	{"OnceExactlyOnceUnderConcurrency", onceExactlyOnceUnderConcurrency},
	{"OnceKeysApart", onceKeysApart},
	{"OnceFreeAgainAfterItsTime", onceFreeAgainAfterItsTime},
	{"CountAddsOneUnderConcurrency", countAddsOneUnderConcurrency},
	{"CountKeysApart", countKeysApart},
	{"CountRestartsAfterItsTime", countRestartsAfterItsTime},
}

// Limiter runs the broker.Limiter suite.
func Limiter(t *testing.T, newLimiter NewLimiter, o Options) {
	o.check(t)
	run(t, limiterCases, func(t *testing.T) limiterEnv {
		clock := testkit.NewClock(time.Now().Truncate(time.Millisecond))
		return limiterEnv{ctx: t.Context(), clock: clock, l: newLimiter(t, clock), o: o, until: clock.Now().Add(time.Hour)}
	})
}

func (e limiterEnv) once(t *testing.T, key string, until time.Time) bool {
	t.Helper()
	first, err := e.l.Once(e.ctx, key, until)
	if err != nil {
		t.Fatalf("Once(%q): %v", key, err)
	}
	return first
}

func (e limiterEnv) count(t *testing.T, key string, until time.Time) int64 {
	t.Helper()
	n, err := e.l.Count(e.ctx, key, until)
	if err != nil {
		t.Fatalf("Count(%q): %v", key, err)
	}
	return n
}

// onceExactlyOnceUnderConcurrency: of concurrent Once calls with one key
// exactly one is first (a DPoP proof or action token is used once).
func onceExactlyOnceUnderConcurrency(t *testing.T, e limiterEnv) {
	var (
		firsts atomic.Int32
		wg     sync.WaitGroup
	)
	for range 32 {
		wg.Go(func() {
			first, err := e.l.Once(e.ctx, "jti-1", e.until)
			if err != nil {
				t.Errorf("Once: %v", err)
			}
			if first {
				firsts.Add(1)
			}
		})
	}
	wg.Wait()
	if n := firsts.Load(); n != 1 {
		t.Fatalf("%d of 32 concurrent Once calls were first, want 1", n)
	}
	if e.once(t, "jti-1", e.until) {
		t.Error("a later Once was first again")
	}
}

// onceKeysApart: keys that look alike are distinct.
func onceKeysApart(t *testing.T, e limiterEnv) {
	for _, k := range []string{"a", "a:b", "a%3Ab", "b"} {
		if !e.once(t, k, e.until) {
			t.Errorf("Once(%q) was not first", k)
		}
	}
}

// onceFreeAgainAfterItsTime: a key is free again once its time has passed.
func onceFreeAgainAfterItsTime(t *testing.T, e limiterEnv) {
	e.o.needClockExpiry(t)
	if !e.once(t, "k", e.clock.Now().Add(time.Minute)) {
		t.Fatal("first Once was not first")
	}
	e.clock.Advance(time.Minute)
	if e.once(t, "k", e.clock.Now().Add(time.Minute)) {
		t.Error("Once at its time was first again, want still held")
	}
	e.clock.Advance(time.Millisecond)
	if !e.once(t, "k", e.clock.Now().Add(time.Minute)) {
		t.Error("Once after its time was not first")
	}
}

// countAddsOneUnderConcurrency: concurrent Counts each get their own new
// value, 1 to n.
func countAddsOneUnderConcurrency(t *testing.T, e limiterEnv) {
	const n = 32
	var (
		mu  sync.Mutex
		got []int64
		wg  sync.WaitGroup
	)
	for range n {
		wg.Go(func() {
			v, err := e.l.Count(e.ctx, "budget", e.until)
			if err != nil {
				t.Errorf("Count: %v", err)
			}
			mu.Lock()
			got = append(got, v)
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(got)
	for i, v := range got {
		if v != int64(i+1) {
			t.Fatalf("values of %d concurrent Counts = %v, want 1 to %d", n, got, n)
		}
	}
}

// countKeysApart: each key counts for itself.
func countKeysApart(t *testing.T, e limiterEnv) {
	for i, k := range []string{"a", "a:b", "a", "b", "a"} {
		want := map[int]int64{0: 1, 1: 1, 2: 2, 3: 1, 4: 3}[i]
		if got := e.count(t, k, e.until); got != want {
			t.Errorf("Count(%q) #%d = %d, want %d", k, i, got, want)
		}
	}
}

// countRestartsAfterItsTime: a counter starts again once the latest time
// given has passed; a later time given extends it.
func countRestartsAfterItsTime(t *testing.T, e limiterEnv) {
	e.o.needClockExpiry(t)
	now := e.clock.Now()
	e.count(t, "c", now.Add(time.Minute))
	if got := e.count(t, "c", now.Add(2*time.Minute)); got != 2 {
		t.Fatalf("second Count = %d, want 2", got)
	}
	e.clock.Advance(time.Minute + time.Millisecond)
	if got := e.count(t, "c", now.Add(time.Minute)); got != 3 {
		t.Errorf("Count after the first time but before the second = %d, want 3 (the later time holds)", got)
	}
	e.clock.Advance(time.Minute)
	if got := e.count(t, "c", e.clock.Now().Add(time.Minute)); got != 1 {
		t.Errorf("Count after its time = %d, want 1", got)
	}
}
