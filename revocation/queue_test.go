package revocation_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/conformance"
)

func TestMemoryQueueConformance(t *testing.T) {
	conformance.Queue(t, func(t *testing.T, clock *conformance.Clock) broker.RevocationQueue {
		return revocation.NewMemoryQueue(clock.Now, 0)
	})
}

func TestRedisQueueConformance(t *testing.T) {
	srv := redistest.Start(t)
	n := 0
	conformance.Queue(t, func(t *testing.T, _ *conformance.Clock) broker.RevocationQueue {
		n++
		return newRedisQueue(t, srv, "q"+strconv.Itoa(n))
	})
}

func newRedisQueue(t *testing.T, srv *redistest.Server, prefix string) *revocation.RedisQueue {
	t.Helper()
	c, err := revocation.NewClient(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	q, err := revocation.NewRedisQueue(c, revocation.RedisOptions{Prefix: prefix, Retention: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// TestRedisQueueSurvivesRestart: an entry written before Redis is killed is
// due after it restarts, to a new queue (a restarted broker).
func TestRedisQueueSurvivesRestart(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAOF())
	ctx := context.Background()
	now := time.Now()
	c := broker.Credential{ID: "acc-1", Kind: broker.KindVaultToken, TaskID: "tsk_1", ExpiresAt: now.Add(time.Hour)}
	if err := newRedisQueue(t, srv, "valet").Enqueue(ctx, c, 3, now, "connection refused"); err != nil {
		t.Fatal(err)
	}
	srv.Restart()
	due, err := newRedisQueue(t, srv, "valet").Due(ctx, now, 10)
	if err != nil || len(due) != 1 || due[0].ID != "acc-1" || due[0].Attempt != 3 {
		t.Fatalf("Due after restart = %+v, %v", due, err)
	}
}

// TestRedisQueueRecordExpiry: the record carries a TTL of the credential's
// expiry plus the retention, and an id whose record is gone is trimmed.
func TestRedisQueueRecordExpiry(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c, err := revocation.NewClient(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q, err := revocation.NewRedisQueue(c, revocation.RedisOptions{Prefix: "valet", Retention: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cred := broker.Credential{ID: "acc-1", Kind: broker.KindVaultToken, TaskID: "tsk_1", ExpiresAt: now.Add(10 * time.Minute)}
	if err := q.Enqueue(ctx, cred, 1, now, ""); err != nil {
		t.Fatal(err)
	}
	ttl, err := c.PTTL(ctx, "valet:retry:rec:acc-1").Result()
	if err != nil || ttl < 10*time.Minute || ttl > 11*time.Minute {
		t.Fatalf("record TTL = %v, %v; want about 11m", ttl, err)
	}
	if err := c.Del(ctx, "valet:retry:rec:acc-1").Err(); err != nil { // as if it expired
		t.Fatal(err)
	}
	if due, err := q.Due(ctx, now, 10); err != nil || len(due) != 0 {
		t.Fatalf("Due = %+v, %v", due, err)
	}
	if n, _ := q.Pending(ctx); n != 0 {
		t.Fatalf("Pending = %d: the expired id was not trimmed", n)
	}
}

// TestRedisQueueDown: a queue whose Redis is gone answers ErrUnavailable.
func TestRedisQueueDown(t *testing.T) {
	srv := redistest.Start(t)
	q := newRedisQueue(t, srv, "valet")
	srv.Kill()
	ctx := context.Background()
	now := time.Now()
	err := q.Enqueue(ctx, broker.Credential{ID: "a", ExpiresAt: now.Add(time.Hour)}, 1, now, "")
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Enqueue with Redis down: %v", err)
	}
	if _, err := q.Due(ctx, now, 1); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Due with Redis down: %v", err)
	}
}
