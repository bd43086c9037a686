package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/oauth"
)

// NewOAuthStore returns an empty oauth.Store reading the time from clock
// where it reads time at all. It is called once per case.
type NewOAuthStore func(t *testing.T, clock *Clock) oauth.Store

type oauthEnv struct {
	ctx   context.Context
	clock *Clock
	s     oauth.Store
	o     Options
}

// oauthCases are the rules of oauth.Store, one function each.
var oauthCases = []namedCase[oauthEnv]{
	{"PutOnlyWhenAbsent", oauthPutOnlyWhenAbsent},
	{"GetAbsentIsNotFound", oauthGetAbsent},
	{"TakeExactlyOnceUnderConcurrency", oauthTakeOnce},
	{"SwapAnswersThePreviousValue", oauthSwap},
	{"SwapAbsentWritesNothing", oauthSwapAbsent},
	{"RecordsExpire", oauthExpire},
}

// OAuthStore runs the oauth.Store suite. With o.ClockDrivesExpiry the
// expiry case advances the Clock; otherwise it waits a real second.
func OAuthStore(t *testing.T, newStore NewOAuthStore, o Options) {
	if !o.ClockDrivesExpiry && o.RealClockExpiry == "" {
		t.Fatal("conformance: Options.RealClockExpiry must say how expiry is tested")
	}
	run(t, oauthCases, func(t *testing.T) oauthEnv {
		clock := testkit.NewClock(time.Now().Truncate(time.Millisecond))
		return oauthEnv{ctx: t.Context(), clock: clock, s: newStore(t, clock), o: o}
	})
}

var oauthSeq atomic.Uint64

func oauthKey(name string) string {
	return fmt.Sprintf("case:%s:%d:%d", name, time.Now().UnixNano(), oauthSeq.Add(1))
}

func (e oauthEnv) put(t *testing.T, key, value string, until time.Time) bool {
	t.Helper()
	ok, err := e.s.Put(e.ctx, key, []byte(value), until)
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return ok
}

func (e oauthEnv) mustGet(t *testing.T, key, want string) {
	t.Helper()
	v, err := e.s.Get(e.ctx, key)
	if err != nil || string(v) != want {
		t.Fatalf("Get(%q) = %q, %v; want %q", key, v, err, want)
	}
}

func oauthPutOnlyWhenAbsent(t *testing.T, e oauthEnv) {
	k := oauthKey("put")
	if !e.put(t, k, "one", e.clock.Now().Add(time.Hour)) {
		t.Fatal("first Put did not write")
	}
	if e.put(t, k, "two", e.clock.Now().Add(time.Hour)) {
		t.Fatal("second Put of the same key wrote")
	}
	e.mustGet(t, k, "one")
	other := oauthKey("put")
	if !e.put(t, other, "three", e.clock.Now().Add(time.Hour)) {
		t.Fatal("Put of another key did not write")
	}
	e.mustGet(t, other, "three")
	e.mustGet(t, k, "one")
}

func oauthGetAbsent(t *testing.T, e oauthEnv) {
	k := oauthKey("absent")
	if _, err := e.s.Get(e.ctx, k); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get of an absent key: %v, want ErrNotFound", err)
	}
	if _, err := e.s.Take(e.ctx, k); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Take of an absent key: %v, want ErrNotFound", err)
	}
}

func oauthTakeOnce(t *testing.T, e oauthEnv) {
	k := oauthKey("take")
	e.put(t, k, "code", e.clock.Now().Add(time.Hour))
	var wg sync.WaitGroup
	var got, missed atomic.Int32
	for range 16 {
		wg.Go(func() {
			v, err := e.s.Take(e.ctx, k)
			switch {
			case err == nil && string(v) == "code":
				got.Add(1)
			case errors.Is(err, broker.ErrNotFound):
				missed.Add(1)
			default:
				t.Errorf("Take: %q, %v", v, err)
			}
		})
	}
	wg.Wait()
	if got.Load() != 1 || missed.Load() != 15 {
		t.Fatalf("16 concurrent Takes: %d got the value, %d not found; want 1 and 15", got.Load(), missed.Load())
	}
	if _, err := e.s.Get(e.ctx, k); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Get after Take: %v, want ErrNotFound", err)
	}
}

func oauthSwap(t *testing.T, e oauthEnv) {
	k := oauthKey("swap")
	e.put(t, k, "v0", e.clock.Now().Add(time.Hour))
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[string]int{}
	for i := range 8 {
		wg.Go(func() {
			old, err := e.s.Swap(e.ctx, k, fmt.Appendf(nil, "v%d", i+1))
			if err != nil {
				t.Errorf("Swap: %v", err)
				return
			}
			mu.Lock()
			seen[string(old)]++
			mu.Unlock()
		})
	}
	wg.Wait()
	// Each value was answered to exactly one Swap: v0 and all but the last
	// written.
	last, err := e.s.Get(e.ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if seen["v0"] != 1 || seen[string(last)] != 0 || len(seen) != 8 {
		t.Fatalf("8 concurrent Swaps answered %v, last value %q: want v0 once and every other value but the last once", seen, last)
	}
	for v, n := range seen {
		if n != 1 || bytes.Equal([]byte(v), last) {
			t.Fatalf("value %q answered %d times", v, n)
		}
	}
}

func oauthSwapAbsent(t *testing.T, e oauthEnv) {
	k := oauthKey("swapabsent")
	if _, err := e.s.Swap(e.ctx, k, []byte("x")); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Swap of an absent key: %v, want ErrNotFound", err)
	}
	if _, err := e.s.Get(e.ctx, k); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Swap of an absent key wrote it: %v", err)
	}
}

func oauthExpire(t *testing.T, e oauthEnv) {
	k, swapped := oauthKey("expire"), oauthKey("expire")
	life := 500 * time.Millisecond
	now := e.clock.Now()
	if !e.o.ClockDrivesExpiry {
		now = time.Now()
	}
	e.put(t, k, "short", now.Add(life))
	e.put(t, swapped, "short", now.Add(life))
	if _, err := e.s.Swap(e.ctx, swapped, []byte("swapped")); err != nil {
		t.Fatal(err)
	}
	e.mustGet(t, k, "short")
	if e.o.ClockDrivesExpiry {
		e.clock.Advance(life)
	} else {
		time.Sleep(life + 200*time.Millisecond)
	}
	for _, key := range []string{k, swapped} {
		if _, err := e.s.Get(e.ctx, key); !errors.Is(err, broker.ErrNotFound) {
			t.Fatalf("Get after the record's time (swapped: %v): %v, want ErrNotFound", key == swapped, err)
		}
	}
	if !e.put(t, k, "again", e.clock.Now().Add(time.Hour)) {
		t.Fatal("Put after expiry did not write")
	}
}
