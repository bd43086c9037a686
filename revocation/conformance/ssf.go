package conformance

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/ssf"
)

// NewSSFStore returns an empty SSF store. It is called once per case.
type NewSSFStore func(t *testing.T) ssf.Store

type ssfEnv struct {
	ctx context.Context
	s   ssf.Store
}

// ssfCases are the rules of ssf.Store, one function each.
var ssfCases = []namedCase[ssfEnv]{
	{"StreamRoundTrip", ssfStreamRoundTrip},
	{"UnknownStreamNotFound", ssfUnknownStreamNotFound},
	{"DeleteDropsQueue", ssfDeleteDropsQueue},
	{"QueueOrderedAndBounded", ssfQueueOrderedAndBounded},
	{"EnqueueSameJTIOnce", ssfEnqueueSameJTIOnce},
	{"AckRemovesAndCounts", ssfAckRemovesAndCounts},
	{"RetryKeepsPlace", ssfRetryKeepsPlace},
	{"QueuesStayApart", ssfQueuesStayApart},
	{"CursorRoundTrip", ssfCursorRoundTrip},
	{"LeaseHasOneHolder", ssfLeaseHasOneHolder},
	{"ConcurrentEnqueueNeverPassesMax", ssfConcurrentEnqueueNeverPassesMax},
}

// SSF runs the ssf.Store suite.
func SSF(t *testing.T, newStore NewSSFStore) {
	run(t, ssfCases, func(t *testing.T) ssfEnv { return ssfEnv{ctx: t.Context(), s: newStore(t)} })
}

func ssfStream(id string) ssf.Stream {
	return ssf.Stream{ID: id, Audience: []string{"https://rp.example"}, EventsRequested: []string{ssf.EventSessionRevoked},
		EventsDelivered: []string{ssf.EventSessionRevoked}, Method: ssf.DeliveryPoll, EndpointURL: "https://valet.example/ssf/poll/" + id,
		Status: ssf.StatusEnabled, CreatedBy: "admin:x/y", CreatedAt: time.Now().UTC().Truncate(time.Millisecond),
		Excluded: []string{`{"format":"opaque","id":"a"}`}}
}

func ssfQ(jti string) ssf.Queued { return ssf.Queued{JTI: jti, SET: "set-" + jti} }

func ssfJTIs(qs []ssf.Queued) []string {
	out := make([]string, len(qs))
	for i, q := range qs {
		out[i] = q.JTI
	}
	return out
}

// ssfStreamRoundTrip: a stream put is read back whole, listed, and
// replaced by a second put.
func ssfStreamRoundTrip(t *testing.T, e ssfEnv) {
	s := ssfStream("s1")
	if err := e.s.PutStream(e.ctx, s); err != nil {
		t.Fatal(err)
	}
	got, err := e.s.Stream(e.ctx, "s1")
	if err != nil || fmt.Sprint(got) != fmt.Sprint(s) {
		t.Fatalf("Stream = %+v, %v; want %+v", got, err, s)
	}
	s.Status, s.Reason = ssf.StatusPaused, "maintenance"
	if err := e.s.PutStream(e.ctx, s); err != nil {
		t.Fatal(err)
	}
	all, err := e.s.Streams(e.ctx)
	if err != nil || len(all) != 1 || all[0].Status != ssf.StatusPaused || all[0].Reason != "maintenance" {
		t.Fatalf("Streams = %+v, %v", all, err)
	}
}

// ssfUnknownStreamNotFound: reading an unknown stream is ErrNotFound;
// deleting it reports false.
func ssfUnknownStreamNotFound(t *testing.T, e ssfEnv) {
	if _, err := e.s.Stream(e.ctx, "nope"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Stream(unknown) = %v, want ErrNotFound", err)
	}
	if ok, err := e.s.DeleteStream(e.ctx, "nope"); ok || err != nil {
		t.Fatalf("DeleteStream(unknown) = %v, %v", ok, err)
	}
}

// ssfDeleteDropsQueue: deleting a stream removes it and its queued SETs.
func ssfDeleteDropsQueue(t *testing.T, e ssfEnv) {
	_ = e.s.PutStream(e.ctx, ssfStream("s1"))
	if ok, err := e.s.Enqueue(e.ctx, "s1", ssfQ("j1"), 10); !ok || err != nil {
		t.Fatalf("Enqueue = %v, %v", ok, err)
	}
	if ok, err := e.s.DeleteStream(e.ctx, "s1"); !ok || err != nil {
		t.Fatalf("DeleteStream = %v, %v", ok, err)
	}
	if _, err := e.s.Stream(e.ctx, "s1"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("Stream after delete = %v", err)
	}
	if qs, err := e.s.Pending(e.ctx, "s1", 10); err != nil || len(qs) != 0 {
		t.Fatalf("Pending after delete = %v, %v", qs, err)
	}
	if all, _ := e.s.Streams(e.ctx); len(all) != 0 {
		t.Fatalf("Streams after delete = %v", all)
	}
}

// ssfQueueOrderedAndBounded: SETs come back oldest first, up to limit; a
// full queue refuses more.
//
// The order is the order of Enqueue, even within one millisecond and
// whatever the jtis (a freeze and its lift, queued together, must leave
// in that order): the jtis here sort against it.
func ssfQueueOrderedAndBounded(t *testing.T, e ssfEnv) {
	for _, jti := range []string{"j9", "j5", "j1"} {
		ok, err := e.s.Enqueue(e.ctx, "s1", ssfQ(jti), 3)
		if !ok || err != nil {
			t.Fatalf("Enqueue %s = %v, %v", jti, ok, err)
		}
	}
	if ok, err := e.s.Enqueue(e.ctx, "s1", ssfQ("j0"), 3); ok || err != nil {
		t.Fatalf("Enqueue into a full queue = %v, %v; want false", ok, err)
	}
	qs, err := e.s.Pending(e.ctx, "s1", 2)
	if err != nil || fmt.Sprint(ssfJTIs(qs)) != "[j9 j5]" || qs[0].SET != "set-j9" {
		t.Fatalf("Pending(2) = %+v, %v", qs, err)
	}
	if qs, _ := e.s.Pending(e.ctx, "s1", 3); fmt.Sprint(ssfJTIs(qs)) != "[j9 j5 j1]" {
		t.Fatalf("Pending(3) = %v, want the order of Enqueue", ssfJTIs(qs))
	}
}

// ssfEnqueueSameJTIOnce: queueing a jti already queued changes nothing.
func ssfEnqueueSameJTIOnce(t *testing.T, e ssfEnv) {
	for range 2 {
		if ok, err := e.s.Enqueue(e.ctx, "s1", ssfQ("j1"), 10); !ok || err != nil {
			t.Fatalf("Enqueue = %v, %v", ok, err)
		}
	}
	if qs, _ := e.s.Pending(e.ctx, "s1", 10); len(qs) != 1 {
		t.Fatalf("Pending = %v, want one", qs)
	}
}

// ssfAckRemovesAndCounts: Ack removes the named SETs, ignores unknown
// ones and counts what it removed.
func ssfAckRemovesAndCounts(t *testing.T, e ssfEnv) {
	for _, j := range []string{"a", "b", "c"} {
		_, _ = e.s.Enqueue(e.ctx, "s1", ssfQ(j), 10)
		time.Sleep(2 * time.Millisecond)
	}
	n, err := e.s.Ack(e.ctx, "s1", []string{"a", "c", "zz"})
	if err != nil || n != 2 {
		t.Fatalf("Ack = %d, %v; want 2", n, err)
	}
	if qs, _ := e.s.Pending(e.ctx, "s1", 10); fmt.Sprint(ssfJTIs(qs)) != "[b]" {
		t.Fatalf("Pending after ack = %v", ssfJTIs(qs))
	}
}

// ssfRetryKeepsPlace: Retry saves attempts and next time without moving
// the SET; a SET no longer queued is not brought back.
func ssfRetryKeepsPlace(t *testing.T, e ssfEnv) {
	_, _ = e.s.Enqueue(e.ctx, "s1", ssfQ("a"), 10)
	time.Sleep(2 * time.Millisecond)
	_, _ = e.s.Enqueue(e.ctx, "s1", ssfQ("b"), 10)
	next := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	q := ssfQ("a")
	q.Attempts, q.NextAt = 2, next
	if err := e.s.Retry(e.ctx, "s1", q); err != nil {
		t.Fatal(err)
	}
	qs, _ := e.s.Pending(e.ctx, "s1", 10)
	if len(qs) != 2 || qs[0].JTI != "a" || qs[0].Attempts != 2 || !qs[0].NextAt.Equal(next) {
		t.Fatalf("Pending after retry = %+v", qs)
	}
	_, _ = e.s.Ack(e.ctx, "s1", []string{"a"})
	if err := e.s.Retry(e.ctx, "s1", q); err != nil {
		t.Fatal(err)
	}
	if qs, _ := e.s.Pending(e.ctx, "s1", 10); fmt.Sprint(ssfJTIs(qs)) != "[b]" {
		t.Fatalf("Retry brought back an acknowledged SET: %v", ssfJTIs(qs))
	}
}

// ssfQueuesStayApart: streams whose ids look like key parts have queues of
// their own.
func ssfQueuesStayApart(t *testing.T, e ssfEnv) {
	_, _ = e.s.Enqueue(e.ctx, "a:b", ssfQ("x"), 10)
	_, _ = e.s.Enqueue(e.ctx, "a", ssfQ("y"), 10)
	if qs, _ := e.s.Pending(e.ctx, "a:b", 10); fmt.Sprint(ssfJTIs(qs)) != "[x]" {
		t.Fatalf("queue a:b = %v", ssfJTIs(qs))
	}
	if n, _ := e.s.Ack(e.ctx, "a", []string{"x"}); n != 0 {
		t.Fatalf("Ack on stream a removed stream a:b's SET")
	}
}

// ssfCursorRoundTrip: the cursor starts empty and reads back what was set.
func ssfCursorRoundTrip(t *testing.T, e ssfEnv) {
	if c, err := e.s.Cursor(e.ctx); c != "" || err != nil {
		t.Fatalf("Cursor = %q, %v; want empty", c, err)
	}
	if err := e.s.SetCursor(e.ctx, "1700000000000-3"); err != nil {
		t.Fatal(err)
	}
	if c, err := e.s.Cursor(e.ctx); c != "1700000000000-3" || err != nil {
		t.Fatalf("Cursor = %q, %v", c, err)
	}
}

// ssfLeaseHasOneHolder: one owner holds the lease and renews it; another
// gets it only once it lapses.
func ssfLeaseHasOneHolder(t *testing.T, e ssfEnv) {
	if ok, err := e.s.Lease(e.ctx, "a", 200*time.Millisecond); !ok || err != nil {
		t.Fatalf("Lease(a) = %v, %v", ok, err)
	}
	if ok, _ := e.s.Lease(e.ctx, "b", 200*time.Millisecond); ok {
		t.Fatal("b took a lease a holds")
	}
	if ok, _ := e.s.Lease(e.ctx, "a", 200*time.Millisecond); !ok {
		t.Fatal("a could not renew its lease")
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		if ok, _ := e.s.Lease(e.ctx, "b", time.Second); ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the lease never lapsed")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ssfConcurrentEnqueueNeverPassesMax: concurrent producers never fill a
// queue past its bound.
func ssfConcurrentEnqueueNeverPassesMax(t *testing.T, e ssfEnv) {
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() { _, _ = e.s.Enqueue(e.ctx, "s1", ssfQ(fmt.Sprintf("j%d", i)), 10) })
	}
	wg.Wait()
	if qs, _ := e.s.Pending(e.ctx, "s1", 100); len(qs) != 10 {
		t.Fatalf("queue holds %d SETs, want exactly its bound of 10", len(qs))
	}
}
