// Package queuetest is the conformance suite every broker.RevocationQueue
// must pass, so the Redis and in-memory queues keep one contract.
package queuetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// Run runs the suite. newQueue is called once per test case and must return
// an empty queue. Times are real-clock based, so a queue that expires
// records by a real clock (Redis) sees sensible values.
func Run(t *testing.T, newQueue func(t *testing.T) broker.RevocationQueue) {
	ctx := context.Background()
	base := time.Now().Truncate(time.Millisecond)
	cred := func(id string) broker.Credential {
		return broker.Credential{ID: id, Kind: broker.KindVaultToken, TaskID: "tsk_" + id, Parent: "p-" + id,
			IssuedAt: base, ExpiresAt: base.Add(time.Hour)}
	}

	t.Run("empty", func(t *testing.T) {
		q := newQueue(t)
		if n, err := q.Pending(ctx); err != nil || n != 0 {
			t.Fatalf("Pending = %d, %v", n, err)
		}
		if due, err := q.Due(ctx, base.Add(time.Hour), 10); err != nil || len(due) != 0 {
			t.Fatalf("Due = %v, %v", due, err)
		}
		if err := q.Done(ctx, "nothing"); err != nil {
			t.Fatalf("Done of an unknown id: %v", err)
		}
	})

	t.Run("due only when next has come, earliest first, whole record", func(t *testing.T) {
		q := newQueue(t)
		must(t, q.Enqueue(ctx, cred("b"), 2, base.Add(2*time.Second), "vault down: b"))
		must(t, q.Enqueue(ctx, cred("a"), 1, base.Add(time.Second), "vault down: a"))
		must(t, q.Enqueue(ctx, cred("c"), 1, base.Add(time.Minute), ""))
		if due, err := q.Due(ctx, base, 10); err != nil || len(due) != 0 {
			t.Fatalf("Due before any next = %v, %v", due, err)
		}
		due, err := q.Due(ctx, base.Add(2*time.Second), 10)
		if err != nil || len(due) != 2 || due[0].ID != "a" || due[1].ID != "b" {
			t.Fatalf("Due = %+v, %v; want a then b", due, err)
		}
		got := due[1]
		want := broker.PendingRevocation{ID: "b", Credential: cred("b"), Attempt: 2, Next: base.Add(2 * time.Second), LastError: "vault down: b"}
		if got.ID != want.ID || got.Attempt != want.Attempt || !got.Next.Equal(want.Next) || got.LastError != want.LastError ||
			got.Credential.ID != "b" || got.Credential.Kind != want.Credential.Kind || got.Credential.TaskID != want.Credential.TaskID ||
			got.Credential.Parent != want.Credential.Parent || !got.Credential.ExpiresAt.Equal(want.Credential.ExpiresAt) ||
			!got.Credential.IssuedAt.Equal(want.Credential.IssuedAt) {
			t.Fatalf("entry = %+v\nwant    %+v", got, want)
		}
		if n, err := q.Pending(ctx); err != nil || n != 3 {
			t.Fatalf("Pending = %d, %v", n, err)
		}
	})

	t.Run("limit", func(t *testing.T) {
		q := newQueue(t)
		for i := range 5 {
			must(t, q.Enqueue(ctx, cred(fmt.Sprint(i)), 1, base.Add(time.Duration(i)*time.Millisecond), ""))
		}
		due, err := q.Due(ctx, base.Add(time.Second), 3)
		if err != nil || len(due) != 3 || due[0].ID != "0" || due[2].ID != "2" {
			t.Fatalf("Due(limit 3) = %+v, %v", due, err)
		}
	})

	t.Run("enqueue again replaces the entry", func(t *testing.T) {
		q := newQueue(t)
		must(t, q.Enqueue(ctx, cred("a"), 1, base, "first"))
		must(t, q.Enqueue(ctx, cred("a"), 2, base.Add(time.Minute), "second"))
		if n, _ := q.Pending(ctx); n != 1 {
			t.Fatalf("Pending = %d after re-queueing one credential", n)
		}
		if due, _ := q.Due(ctx, base.Add(time.Second), 10); len(due) != 0 {
			t.Fatalf("the re-queued entry is due at its old time: %+v", due)
		}
		due, _ := q.Due(ctx, base.Add(time.Minute), 10)
		if len(due) != 1 || due[0].Attempt != 2 || due[0].LastError != "second" {
			t.Fatalf("Due = %+v", due)
		}
	})

	t.Run("done removes", func(t *testing.T) {
		q := newQueue(t)
		must(t, q.Enqueue(ctx, cred("a"), 1, base, ""))
		must(t, q.Enqueue(ctx, cred("b"), 1, base, ""))
		must(t, q.Done(ctx, "a"))
		due, _ := q.Due(ctx, base, 10)
		if len(due) != 1 || due[0].ID != "b" {
			t.Fatalf("Due after Done(a) = %+v", due)
		}
		if n, _ := q.Pending(ctx); n != 1 {
			t.Fatalf("Pending = %d", n)
		}
	})

	t.Run("rejects what it could never retry", func(t *testing.T) {
		q := newQueue(t)
		noExpiry := cred("a")
		noExpiry.ExpiresAt = time.Time{}
		for name, err := range map[string]error{
			"empty id":   q.Enqueue(ctx, broker.Credential{ExpiresAt: base}, 1, base, ""),
			"no expiry":  q.Enqueue(ctx, noExpiry, 1, base, ""),
			"attempt 0":  q.Enqueue(ctx, cred("a"), 0, base, ""),
			"attempt -1": q.Enqueue(ctx, cred("a"), -1, base, ""),
		} {
			if err == nil {
				t.Errorf("%s: accepted", name)
			}
		}
		if n, _ := q.Pending(ctx); n != 0 {
			t.Fatalf("Pending = %d after only bad entries", n)
		}
	})

	t.Run("ids that look like keys stay apart", func(t *testing.T) {
		q := newQueue(t)
		must(t, q.Enqueue(ctx, cred("x:rec:y"), 1, base, ""))
		must(t, q.Enqueue(ctx, cred("x"), 1, base, ""))
		due, _ := q.Due(ctx, base, 10)
		if len(due) != 2 {
			t.Fatalf("Due = %+v", due)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		q := newQueue(t)
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := cred(fmt.Sprint("c", i))
				if err := q.Enqueue(ctx, c, 1, base, ""); err != nil {
					t.Error(err)
				}
				if i%2 == 0 {
					if err := q.Done(ctx, c.ID); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		if n, err := q.Pending(ctx); err != nil || n != 10 {
			t.Fatalf("Pending = %d, %v; want 10", n, err)
		}
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
