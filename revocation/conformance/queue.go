package conformance

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
)

// NewQueue returns an empty queue that reads the time from clock where it
// reads time at all. It is called once per case.
type NewQueue func(t *testing.T, clock *Clock) broker.RevocationQueue

type queueEnv struct {
	ctx  context.Context
	base time.Time
	q    broker.RevocationQueue
}

// queueCases are the rules of broker.RevocationQueue, one function each.
var queueCases = []namedCase[queueEnv]{
	{"EmptyQueue", emptyQueue},
	{"DueWhenNextHasComeEarliestFirst", dueWhenNextHasComeEarliestFirst},
	{"DueUpToLimit", dueUpToLimit},
	{"EnqueueAgainReplaces", enqueueAgainReplaces},
	{"DoneRemoves", doneRemoves},
	{"UnretriableRefused", unretriableRefused},
	{"IDsThatLookLikeKeysStayApart", idsThatLookLikeKeysStayApart},
	{"ConcurrentEnqueueAndDone", concurrentEnqueueAndDone},
}

// Queue runs the broker.RevocationQueue suite. Its times are real-clock
// based, so a queue that expires entries by a real clock (Redis) sees
// sensible values.
func Queue(t *testing.T, newQueue NewQueue) {
	run(t, queueCases, func(t *testing.T) queueEnv {
		clock := testkit.NewClock(time.Now().Truncate(time.Millisecond))
		return queueEnv{ctx: t.Context(), base: clock.Now(), q: newQueue(t, clock)}
	})
}

func (e queueEnv) cred(id string) broker.Credential {
	return broker.Credential{ID: id, Kind: broker.KindVaultToken, TaskID: "tsk_" + id, Parent: "p-" + id,
		IssuedAt: e.base, ExpiresAt: e.base.Add(time.Hour)}
}

// emptyQueue: nothing pending, nothing due, Done of an unknown id is fine.
func emptyQueue(t *testing.T, e queueEnv) {
	if n, err := e.q.Pending(e.ctx); err != nil || n != 0 {
		t.Fatalf("Pending = %d, %v", n, err)
	}
	if due, err := e.q.Due(e.ctx, e.base.Add(time.Hour), 10); err != nil || len(due) != 0 {
		t.Fatalf("Due = %v, %v", due, err)
	}
	if err := e.q.Done(e.ctx, "nothing"); err != nil {
		t.Fatalf("Done of an unknown id: %v", err)
	}
}

// dueWhenNextHasComeEarliestFirst: an entry is due once its next attempt
// has come, earliest first, with the whole record.
func dueWhenNextHasComeEarliestFirst(t *testing.T, e queueEnv) {
	must(t, e.q.Enqueue(e.ctx, e.cred("b"), 2, e.base.Add(2*time.Second), "vault down: b"))
	must(t, e.q.Enqueue(e.ctx, e.cred("a"), 1, e.base.Add(time.Second), "vault down: a"))
	must(t, e.q.Enqueue(e.ctx, e.cred("c"), 1, e.base.Add(time.Minute), ""))
	if due, err := e.q.Due(e.ctx, e.base, 10); err != nil || len(due) != 0 {
		t.Fatalf("Due before any next = %v, %v", due, err)
	}
	due, err := e.q.Due(e.ctx, e.base.Add(2*time.Second), 10)
	if err != nil || len(due) != 2 || due[0].ID != "a" || due[1].ID != "b" {
		t.Fatalf("Due = %+v, %v; want a then b", due, err)
	}
	got := due[1]
	want := broker.PendingRevocation{ID: "b", Credential: e.cred("b"), Attempt: 2, Next: e.base.Add(2 * time.Second), LastError: "vault down: b"}
	if got.ID != want.ID || got.Attempt != want.Attempt || !got.Next.Equal(want.Next) || got.LastError != want.LastError {
		t.Errorf("entry = %+v\nwant    %+v", got, want)
	}
	wantCreds(t, []broker.Credential{got.Credential}, []broker.Credential{want.Credential})
	if n, err := e.q.Pending(e.ctx); err != nil || n != 3 {
		t.Fatalf("Pending = %d, %v", n, err)
	}
}

// dueUpToLimit: Due returns at most limit entries, the earliest.
func dueUpToLimit(t *testing.T, e queueEnv) {
	for i := range 5 {
		must(t, e.q.Enqueue(e.ctx, e.cred(fmt.Sprint(i)), 1, e.base.Add(time.Duration(i)*time.Millisecond), ""))
	}
	due, err := e.q.Due(e.ctx, e.base.Add(time.Second), 3)
	if err != nil || len(due) != 3 || due[0].ID != "0" || due[2].ID != "2" {
		t.Fatalf("Due(limit 3) = %+v, %v", due, err)
	}
}

// enqueueAgainReplaces: enqueueing a credential again replaces its entry.
func enqueueAgainReplaces(t *testing.T, e queueEnv) {
	must(t, e.q.Enqueue(e.ctx, e.cred("a"), 1, e.base, "first"))
	must(t, e.q.Enqueue(e.ctx, e.cred("a"), 2, e.base.Add(time.Minute), "second"))
	if n, _ := e.q.Pending(e.ctx); n != 1 {
		t.Fatalf("Pending = %d after re-queueing one credential", n)
	}
	if due, _ := e.q.Due(e.ctx, e.base.Add(time.Second), 10); len(due) != 0 {
		t.Fatalf("the re-queued entry is due at its old time: %+v", due)
	}
	due, _ := e.q.Due(e.ctx, e.base.Add(time.Minute), 10)
	if len(due) != 1 || due[0].Attempt != 2 || due[0].LastError != "second" {
		t.Fatalf("Due = %+v", due)
	}
}

// doneRemoves: Done takes one entry off.
func doneRemoves(t *testing.T, e queueEnv) {
	must(t, e.q.Enqueue(e.ctx, e.cred("a"), 1, e.base, ""))
	must(t, e.q.Enqueue(e.ctx, e.cred("b"), 1, e.base, ""))
	must(t, e.q.Done(e.ctx, "a"))
	due, _ := e.q.Due(e.ctx, e.base, 10)
	if len(due) != 1 || due[0].ID != "b" {
		t.Fatalf("Due after Done(a) = %+v", due)
	}
	if n, _ := e.q.Pending(e.ctx); n != 1 {
		t.Fatalf("Pending = %d", n)
	}
}

// unretriableRefused: an entry the queue could never retry (no id, no
// expiry, no attempt made) is refused.
func unretriableRefused(t *testing.T, e queueEnv) {
	noExpiry := e.cred("a")
	noExpiry.ExpiresAt = time.Time{}
	for name, err := range map[string]error{
		"empty id":   e.q.Enqueue(e.ctx, broker.Credential{ExpiresAt: e.base}, 1, e.base, ""),
		"no expiry":  e.q.Enqueue(e.ctx, noExpiry, 1, e.base, ""),
		"attempt 0":  e.q.Enqueue(e.ctx, e.cred("a"), 0, e.base, ""),
		"attempt -1": e.q.Enqueue(e.ctx, e.cred("a"), -1, e.base, ""),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if n, _ := e.q.Pending(e.ctx); n != 0 {
		t.Fatalf("Pending = %d after only bad entries", n)
	}
}

// idsThatLookLikeKeysStayApart: an id never names another entry's key.
func idsThatLookLikeKeysStayApart(t *testing.T, e queueEnv) {
	must(t, e.q.Enqueue(e.ctx, e.cred("x:rec:y"), 1, e.base, ""))
	must(t, e.q.Enqueue(e.ctx, e.cred("x"), 1, e.base, ""))
	if due, _ := e.q.Due(e.ctx, e.base, 10); len(due) != 2 {
		t.Fatalf("Due = %+v", due)
	}
}

// concurrentEnqueueAndDone: concurrent Enqueues and Dones lose nothing.
func concurrentEnqueueAndDone(t *testing.T, e queueEnv) {
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			c := e.cred(fmt.Sprint("c", i))
			if err := e.q.Enqueue(e.ctx, c, 1, e.base, ""); err != nil {
				t.Error(err)
			}
			if i%2 == 0 {
				if err := e.q.Done(e.ctx, c.ID); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if n, err := e.q.Pending(e.ctx); err != nil || n != 10 {
		t.Fatalf("Pending = %d, %v; want 10", n, err)
	}
}
