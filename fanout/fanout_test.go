package fanout_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
)

// world is a real Redis with its ledger (which writes the feed) and a hub
// over a feed client of its own.
type world struct {
	t      *testing.T
	redis  *redistest.Server
	ledger *revocation.RedisLedger
	hub    *fanout.Hub
	n      int
}

func newWorld(t *testing.T, lim fanout.Limits) *world {
	t.Helper()
	srv := redistest.Start(t)
	rc, err := revocation.NewClient(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	l, err := revocation.NewRedisLedger(rc, revocation.RedisOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fc := revocation.NewFeedClient(rc, 4)
	t.Cleanup(func() { fc.Close() })
	if lim.Wait == 0 {
		lim.Wait = 50 * time.Millisecond
	}
	hub, err := fanout.New(revocation.NewFeed(fc, ""), lim, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &world{t: t, redis: srv, ledger: l, hub: hub}
}

// publish appends n entries to the feed (epochs of fresh templates) and
// returns their template names.
func (w *world) publish(n int) []string {
	w.t.Helper()
	var keys []string
	for range n {
		w.n++
		k := fmt.Sprintf("t%03d", w.n)
		if err := w.ledger.SetEpoch(context.Background(), broker.Epoch{Dimension: broker.DimTemplate, Key: k, Before: time.Now()}); err != nil {
			w.t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

func (w *world) subscribe(caller, cursor string) *fanout.Subscription {
	w.t.Helper()
	s, err := w.hub.Subscribe(context.Background(), caller, cursor)
	if err != nil {
		w.t.Fatalf("subscribe %s from %q: %v", caller, cursor, err)
	}
	w.t.Cleanup(s.Close)
	return s
}

// read takes n entries from s (failing after 10 s) and returns them.
func read(t *testing.T, s *fanout.Subscription, n int) []broker.FeedEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []broker.FeedEntry
	for len(out) < n {
		es, err := s.Next(ctx, time.Second)
		if err != nil {
			t.Fatalf("after %d of %d entries: %v", len(out), n, err)
		}
		out = append(out, es...)
	}
	if len(out) != n {
		t.Fatalf("read %d entries, want %d", len(out), n)
	}
	return out
}

func keysOf(es []broker.FeedEntry) []string {
	var ks []string
	for _, e := range es {
		ks = append(ks, e.Epoch.Key)
	}
	return ks
}

func sameKeys(t *testing.T, got []broker.FeedEntry, want []string) {
	t.Helper()
	if g := keysOf(got); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("entries %v, want %v (in order, no gap, no repeat)", g, want)
	}
}

// TestSlowSubscriberIsDroppedOthersKeepReading guards issue 9 #4: a
// follower that stops reading never holds the others back; once it is a
// whole backlog behind it is dropped with ErrLagged.
func TestSlowSubscriberIsDroppedOthersKeepReading(t *testing.T) {
	w := newWorld(t, fanout.Limits{Backlog: 8})
	slow := w.subscribe("client:slow", "")
	fast := w.subscribe("client:fast", "")
	for range 20 {
		keys := w.publish(1)
		sameKeys(t, read(t, fast, 1), keys)
	}
	_, err := slow.Next(context.Background(), time.Second)
	if !errors.Is(err, fanout.ErrLagged) {
		t.Fatalf("slow subscriber: %v, want ErrLagged", err)
	}
	more := w.publish(2)
	sameKeys(t, read(t, fast, 2), more)
}

// TestCaps guards the caps per caller (429) and in total (503), and that
// closing a stream frees its place.
func TestCaps(t *testing.T) {
	w := newWorld(t, fanout.Limits{MaxSubscribers: 3, MaxPerCaller: 2})
	a1 := w.subscribe("client:a", "")
	w.subscribe("client:a", "")
	_, err := w.hub.Subscribe(context.Background(), "client:a", "")
	if broker.ErrorCode(err) != broker.CodeTooManyRequests {
		t.Fatalf("third stream of one caller: %v, want too_many_requests", err)
	}
	w.subscribe("client:b", "")
	_, err = w.hub.Subscribe(context.Background(), "client:c", "")
	if broker.ErrorCode(err) != broker.CodeUnavailable {
		t.Fatalf("stream over the total: %v, want unavailable", err)
	}
	a1.Close()
	a1.Close() // idempotent: frees one place, not two
	w.subscribe("client:c", "")
	if _, err = w.hub.Subscribe(context.Background(), "client:d", ""); broker.ErrorCode(err) != broker.CodeUnavailable {
		t.Fatalf("a double Close freed two places: %v", err)
	}
	if n := w.hub.Subscribers(); n != 3 {
		t.Fatalf("%d subscribers, want 3", n)
	}
}

// TestResumeByCursor guards resume: from a cursor inside the ring, from
// one older than the ring (caught up from the source, then joined, with no
// gap and no repeat), and the bound on catching up.
func TestResumeByCursor(t *testing.T) {
	w := newWorld(t, fanout.Limits{Backlog: 4, MaxCatchup: 6})
	live := w.subscribe("client:live", "")
	var keys []string
	var got []broker.FeedEntry
	for range 10 {
		k := w.publish(1)
		got = append(got, read(t, live, 1)...)
		keys = append(keys, k...)
	}
	sameKeys(t, got, keys)
	cursor := func(i int) string { return got[i].Cursor }

	t.Run("inside the ring", func(t *testing.T) {
		s := w.subscribe("client:ring", cursor(7))
		sameKeys(t, read(t, s, 2), keys[8:])
	})
	t.Run("older than the ring", func(t *testing.T) {
		s := w.subscribe("client:old", cursor(4))
		early := read(t, s, 5)
		next := w.publish(1)
		keys = append(keys, next...)
		sameKeys(t, append(early, read(t, s, 1)...), keys[5:])
		sameKeys(t, read(t, live, 1), next)
	})
	t.Run("past the catch-up limit", func(t *testing.T) {
		s := w.subscribe("client:far", cursor(0))
		if _, err := s.Next(context.Background(), time.Second); !errors.Is(err, fanout.ErrCatchupLimit) {
			t.Fatalf("%v, want ErrCatchupLimit", err)
		}
	})
	t.Run("0-0, the snapshot cursor of an empty feed, is accepted and bounded", func(t *testing.T) {
		s := w.subscribe("client:zero", "0-0")
		if _, err := s.Next(context.Background(), time.Millisecond); !errors.Is(err, fanout.ErrCatchupLimit) {
			t.Fatalf("%v, want ErrCatchupLimit (11 entries > 6)", err)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		for _, c := range []string{"x", "1-x", "-1", "1-2-3"} {
			if _, err := w.hub.Subscribe(context.Background(), "client:x", c); broker.ErrorCode(err) != broker.CodeInvalid {
				t.Errorf("cursor %q: %v, want invalid_request", c, err)
			}
		}
	})
}

// TestReaderFailureEndsStreams: when the source fails, every stream ends
// (its follower falls back and reconnects) and new ones get 503 until the
// source is back.
func TestReaderFailureEndsStreams(t *testing.T) {
	w := newWorld(t, fanout.Limits{})
	s := w.subscribe("client:a", "")
	w.redis.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, err := s.Next(ctx, time.Second)
		if errors.Is(err, fanout.ErrUnavailable) {
			break
		}
		if err != nil {
			t.Fatalf("%v, want ErrUnavailable", err)
		}
	}
	if _, err := w.hub.Subscribe(context.Background(), "client:b", ""); broker.ErrorCode(err) != broker.CodeUnavailable {
		t.Fatalf("subscribe while Redis is down: %v, want unavailable", err)
	}
	w.redis.Restart()
	s2 := w.subscribe("client:b", "")
	keys := w.publish(1)
	sameKeys(t, read(t, s2, 1), keys)
}
