package revocation_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/ledgertest"
)

// testRecords is the conformance suite of broker.Records.
func testRecords(t *testing.T, newStore func(t *testing.T) broker.Records) {
	ctx := context.Background()
	until := time.Now().Add(time.Hour)
	t.Run("put get and exists", func(t *testing.T) {
		s := newStore(t)
		if err := s.Put(ctx, "approval", "a:1", []byte(`{"x":1}`), until); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx, "approval", "a:1", []byte(`{}`), until); !errors.Is(err, broker.ErrExists) {
			t.Fatalf("second put: %v, want ErrExists", err)
		}
		if b, err := s.Get(ctx, "approval", "a:1"); err != nil || string(b) != `{"x":1}` {
			t.Fatalf("get: %s %v", b, err)
		}
		if _, err := s.Get(ctx, "action", "a:1"); !errors.Is(err, broker.ErrNotFound) {
			t.Fatalf("another kind: %v, want ErrNotFound", err)
		}
	})
	t.Run("swap exactly once", func(t *testing.T) {
		s := newStore(t)
		if err := s.Put(ctx, "approval", "b", []byte("pending"), until); err != nil {
			t.Fatal(err)
		}
		var wins atomic.Int64
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := s.Swap(ctx, "approval", "b", []byte("pending"), []byte(fmt.Sprint("decided-", i)))
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, broker.ErrNotActive):
					t.Errorf("swap: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d swaps won, want 1", wins.Load())
		}
		if err := s.Swap(ctx, "approval", "none", []byte("x"), []byte("y")); !errors.Is(err, broker.ErrNotFound) {
			t.Fatalf("swap of a missing record: %v", err)
		}
	})
	t.Run("list by kind", func(t *testing.T) {
		s := newStore(t)
		for _, id := range []string{"1", "2", "3"} {
			if err := s.Put(ctx, "approval", id, []byte("r"+id), until); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Put(ctx, "action", "9", []byte("other"), until); err != nil {
			t.Fatal(err)
		}
		got, err := s.List(ctx, "approval", 100)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, b := range got {
			names = append(names, string(b))
		}
		sort.Strings(names)
		if fmt.Sprint(names) != "[r1 r2 r3]" {
			t.Fatalf("list = %v", names)
		}
		if got, _ := s.List(ctx, "approval", 2); len(got) != 2 {
			t.Fatalf("limit 2 gave %d", len(got))
		}
	})
	t.Run("append and items", func(t *testing.T) {
		s := newStore(t)
		for i := range 3 {
			if err := s.Append(ctx, "event", "tsk", []byte(fmt.Sprint(i)), until, 3); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Append(ctx, "event", "tsk", []byte("4"), until, 3); !errors.Is(err, broker.ErrExists) {
			t.Fatalf("append to a full list: %v", err)
		}
		items, err := s.Items(ctx, "event", "tsk", 10)
		if err != nil || len(items) != 3 || string(items[0]) != "0" || string(items[2]) != "2" {
			t.Fatalf("items = %q %v", items, err)
		}
		if items, err := s.Items(ctx, "event", "none", 10); err != nil || len(items) != 0 {
			t.Fatalf("items of nothing = %q %v", items, err)
		}
	})
	t.Run("hold caps a set", func(t *testing.T) {
		s := newStore(t)
		var wins atomic.Int64
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch err := s.Hold(ctx, "approval-pending", "tsk", fmt.Sprint("apr", i), until, 3); {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, broker.ErrExists):
					t.Errorf("hold: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 3 {
			t.Fatalf("%d of 16 concurrent holds won 3 places", wins.Load())
		}
		if err := s.Hold(ctx, "approval-pending", "other", "apr0", until, 3); err != nil {
			t.Fatalf("another set is its own: %v", err)
		}
		if err := s.Release(ctx, "approval-pending", "tsk", "nobody"); err != nil {
			t.Fatalf("releasing a member not held: %v", err)
		}
		// Release one held member (which one won is unknown: release all,
		// then fill again).
		for i := range 16 {
			if err := s.Release(ctx, "approval-pending", "tsk", fmt.Sprint("apr", i)); err != nil {
				t.Fatal(err)
			}
		}
		for _, m := range []string{"a", "b"} {
			if err := s.Hold(ctx, "approval-pending", "tsk", m, until, 3); err != nil {
				t.Fatalf("hold after release: %v", err)
			}
		}
		if err := s.Hold(ctx, "approval-pending", "tsk", "a", until, 2); err != nil {
			t.Fatalf("renewing a held member of a full set: %v", err)
		}
		if err := s.Hold(ctx, "approval-pending", "tsk", "c", until, 2); !errors.Is(err, broker.ErrExists) {
			t.Fatalf("hold in a full set: %v", err)
		}
		// A member whose time has passed no longer counts.
		if err := s.Hold(ctx, "approval-pending", "old", "x", time.Now().Add(-time.Second), 1); err != nil {
			t.Fatal(err)
		}
		if err := s.Hold(ctx, "approval-pending", "old", "y", until, 1); err != nil {
			t.Fatalf("hold where the only member expired: %v", err)
		}
	})
}

func TestRedisRecords(t *testing.T) {
	c := newClient(t, redistest.Start(t).URL())
	var n atomic.Int64
	testRecords(t, func(t *testing.T) broker.Records {
		return newRedisLedger(t, c, revocation.RedisOptions{Prefix: fmt.Sprint("rec", n.Add(1))})
	})
}

func TestMemoryRecords(t *testing.T) {
	testRecords(t, func(t *testing.T) broker.Records {
		return revocation.NewMemoryLedger(time.Now, time.Hour)
	})
}

// TestMemoryRecordsExpire: records vanish when the ledger's clock passes
// their expiry.
func TestMemoryRecordsExpire(t *testing.T) {
	clock := ledgertest.NewClock(time.Now())
	l := revocation.NewMemoryLedger(clock.Now, time.Hour)
	ctx := context.Background()
	if err := l.Put(ctx, "action", "x", []byte("1"), clock.Now().Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if _, err := l.Get(ctx, "action", "x"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("expired record: %v", err)
	}
	if err := l.Put(ctx, "action", "x", []byte("2"), clock.Now().Add(time.Minute)); err != nil {
		t.Fatalf("put over an expired record: %v", err)
	}
}
