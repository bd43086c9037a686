package revocation_test

import (
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/conformance"
)

func TestRedisRecords(t *testing.T) {
	newLedger := redisLedgers(t)
	conformance.Records(t, func(t *testing.T, clock *conformance.Clock) broker.Records {
		return newLedger(t, clock)
	}, conformance.Options{RealClockExpiry: "TestRedisRecordsExpire (the TTL of every record key)"})
}

func TestMemoryRecords(t *testing.T) {
	conformance.Records(t, func(t *testing.T, clock *conformance.Clock) broker.Records {
		return newMemoryLedger(t, clock)
	}, memoryOptions)
}

// TestRedisRecordsExpire: every key a record, a list, a held set, a
// one-time use or a counter lives in expires at the time it was given (the
// Redis side of the suites' expiry cases, which advance a fake clock).
func TestRedisRecordsExpire(t *testing.T) {
	ctx := t.Context()
	c := newClient(t, redistest.Start(t).URL())
	l := newRedisLedger(t, c, revocation.RedisOptions{Prefix: "r"})
	until := time.Now().Add(10 * time.Minute)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(l.Put(ctx, "action", "x", []byte("1"), until))
	must(l.Append(ctx, "event", "tsk", []byte("1"), until, 10))
	must(l.Append(ctx, "event", "tsk", []byte("2"), until.Add(-time.Minute), 10)) // an earlier time does not shorten it
	must(l.Hold(ctx, "approval-pending", "tsk", "m", until, 10))
	if _, err := l.Once(ctx, "jti-1", until); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Count(ctx, "budget", until); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Count(ctx, "budget", until.Add(-time.Minute)); err != nil { // an earlier time does not shorten it
		t.Fatal(err)
	}
	for _, k := range []string{"r:rec:action:x", "r:recidx:action", "r:list:event:tsk", "r:hold:approval-pending:tsk", "r:once:jti-1", "r:count:budget"} {
		ttl, err := c.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatalf("PTTL %s: %v", k, err)
		}
		if left := time.Until(until); ttl <= 0 || ttl > left+time.Second || ttl < left-time.Second {
			t.Errorf("PTTL %s = %v, want about %v", k, ttl, left)
		}
	}
}
