package audit

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/replwait"
)

func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: redistest.Start(t).Addr()})
	t.Cleanup(func() { c.Close() })
	return c
}

// faultHook injects faults into the audit append script (EVALSHA/EVAL):
// lostReplies appends run in Redis and then report a timeout, as a stall
// makes a client give up on a reply; repeats appends are sent twice, as a
// client's retry of a timed-out command does.
type faultHook struct {
	lostReplies atomic.Int32
	repeats     atomic.Int32
}

func (h *faultHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *faultHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *faultHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		name := cmd.Name()
		if name != "evalsha" && name != "eval" {
			return next(ctx, cmd)
		}
		err := next(ctx, cmd)
		if err == nil && h.repeats.Add(-1) >= 0 {
			err = next(ctx, cmd)
		}
		if err == nil && h.lostReplies.Add(-1) >= 0 {
			err = &net.OpError{Op: "read", Net: "tcp", Err: errors.New("i/o timeout (injected)")}
			cmd.SetErr(err)
		}
		return err
	}
}

// TestRedisAppendSurvivesLostReplyAndRetry guards issue 9 #11: a stall made
// the client time out on an XADD that had landed, and the next event (or
// the client's retry) reused its seq, so `valet audit verify --redis`
// reported tampering. Now the append is checked against the chain head in
// one script: a retry is a no-op, and after a lost reply the Log continues
// after what landed.
func TestRedisAppendSurvivesLostReplyAndRetry(t *testing.T) {
	c := redisClient(t)
	hook := &faultHook{}
	c.AddHook(hook)
	w, err := NewRedisWriter(c, RedisWriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLog(w)
	rec := func(typ string) error {
		return l.Record(context.Background(), broker.Event{Type: typ, TaskID: "tsk_1"})
	}
	if err := rec("one"); err != nil {
		t.Fatal(err)
	}
	hook.repeats.Store(1) // the client sends the same append twice
	if err := rec("two"); err != nil {
		t.Fatalf("a repeated append failed: %v", err)
	}
	hook.lostReplies.Store(1) // the append lands, its reply is lost
	if err := rec("three"); err == nil {
		t.Fatal("Record reported success although the reply was lost")
	}
	if err := rec("four"); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyStream(context.Background(), c, "valet")
	if err != nil {
		t.Fatalf("VerifyStream: %v", err)
	}
	if rep.Events != 4 || rep.Duplicates != 0 || rep.Chains[w.Chain()] != 4 {
		t.Fatalf("report %+v, want 4 events in one chain, no duplicates", rep)
	}
	if n := c.LLen(context.Background(), w.taskIndex("tsk_1")).Val(); n != 4 {
		t.Fatalf("task index has %d entries, want 4", n)
	}
}

// stallProxy forwards TCP to Redis and, while stalled, holds Redis's
// replies back (commands still reach Redis and run): the network stall of
// the report, where the client gave up on replies to appends that landed.
type stallProxy struct {
	ln      net.Listener
	target  string
	mu      sync.Mutex
	stalled chan struct{} // closed when not stalled
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, stalled: make(chan struct{})}
	close(p.stalled)
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			cc, err := ln.Accept()
			if err != nil {
				return
			}
			sc, err := net.Dial("tcp", target)
			if err != nil {
				cc.Close()
				continue
			}
			go func() { _, _ = io.Copy(sc, cc); sc.Close() }()
			go func() {
				defer cc.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := sc.Read(buf)
					if n > 0 {
						p.mu.Lock()
						wait := p.stalled
						p.mu.Unlock()
						<-wait
						if _, werr := cc.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *stallProxy) stall() {
	p.mu.Lock()
	p.stalled = make(chan struct{})
	p.mu.Unlock()
}

func (p *stallProxy) resume() {
	p.mu.Lock()
	close(p.stalled)
	p.mu.Unlock()
}

// TestRedisAppendUnderStall runs the stall of the report over a real
// connection: replies are held back longer than the client's read
// timeout, so the client gives up on appends that Redis ran, and go-redis
// retries them on new connections. Before the fix the stream then held
// one seq several times (same hash from retries, other hashes from the
// next events) and did not verify.
func TestRedisAppendUnderStall(t *testing.T) {
	srv := redistest.Start(t)
	proxy := newStallProxy(t, srv.Addr())
	c := redis.NewClient(&redis.Options{Addr: proxy.ln.Addr().String(), ReadTimeout: 100 * time.Millisecond})
	defer c.Close()
	w, err := NewRedisWriter(c, RedisWriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLog(w)
	ctx := context.Background()
	if err := l.Record(ctx, broker.Event{Type: "before"}); err != nil {
		t.Fatal(err)
	}
	proxy.stall()
	var failed int
	for range 3 {
		if l.Record(ctx, broker.Event{Type: "during"}) != nil {
			failed++
		}
	}
	proxy.resume()
	if failed == 0 {
		t.Fatal("no append failed during the stall: the stall was not reproduced")
	}
	if err := l.Record(ctx, broker.Event{Type: "after"}); err != nil {
		t.Fatal(err)
	}
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer direct.Close()
	rep, err := VerifyStream(ctx, direct, "valet")
	if err != nil {
		t.Fatalf("VerifyStream after a stall: %v", err)
	}
	if rep.Duplicates != 0 || rep.Events < 2 {
		t.Fatalf("report %+v: want no duplicates", rep)
	}
}

// TestVerifyStreamTellsDuplicateFromTampering: an entry repeated byte for
// byte (what a retried non-idempotent XADD left in streams written before
// the fix) is counted, not called tampering; an edited one still is.
func TestVerifyStreamTellsDuplicateFromTampering(t *testing.T) {
	c := redisClient(t)
	ctx := context.Background()
	w, _ := NewRedisWriter(c, RedisWriterOptions{})
	l := NewLog(w)
	for _, typ := range []string{"a", "b", "c"} {
		if err := l.Record(ctx, broker.Event{Type: typ}); err != nil {
			t.Fatal(err)
		}
	}
	msgs := c.XRange(ctx, "valet:audit", "-", "+").Val()
	dup := msgs[1].Values["line"].(string)
	// Rebuild the stream as an old writer would have left it: b twice.
	c.Del(ctx, "valet:audit")
	for _, line := range []string{msgs[0].Values["line"].(string), dup, dup, msgs[2].Values["line"].(string)} {
		c.XAdd(ctx, &redis.XAddArgs{Stream: "valet:audit", Values: map[string]any{"chain": w.Chain(), "line": line}})
	}
	rep, err := VerifyStream(ctx, c, "valet")
	if err != nil || rep.Duplicates != 1 || rep.Events != 3 {
		t.Fatalf("VerifyStream = %+v, %v; want 3 events and 1 duplicate", rep, err)
	}
	c.XAdd(ctx, &redis.XAddArgs{Stream: "valet:audit", Values: map[string]any{"chain": w.Chain(),
		"line": strings.Replace(dup, `"type":"b"`, `"type":"B"`, 1)}})
	if _, err := VerifyStream(ctx, c, "valet"); !errors.Is(err, ErrBroken) {
		t.Fatalf("an edited repeat verified: %v", err)
	}
}

// TestRedisStreamRetention guards issue 9 #1 and #15: the audit stream is
// trimmed by length (MAXLEN ~) and by age (MINID), the task index and the
// chain head expire with the retention, and a trimmed stream still
// verifies (its chains start at their first surviving entry).
func TestRedisStreamRetention(t *testing.T) {
	c := redisClient(t)
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	w, err := NewRedisWriter(c, RedisWriterOptions{Retention: time.Hour, MaxLen: 100, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLog(w)
	for range 1000 {
		if err := l.Record(ctx, broker.Event{Type: "x", TaskID: "tsk_r"}); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.XLen(ctx, "valet:audit").Val(); n >= 300 {
		t.Fatalf("stream holds %d entries with MaxLen 100", n)
	}
	for _, key := range []string{w.taskIndex("tsk_r"), w.head()} {
		if ttl := c.PTTL(ctx, key).Val(); ttl <= 0 || ttl > time.Hour {
			t.Fatalf("%s has TTL %v, want (0, 1h]", key, ttl)
		}
	}
	rep, err := VerifyStream(ctx, c, "valet")
	if err != nil || rep.Trimmed[w.Chain()] <= 1 || rep.Chains[w.Chain()] != 1000 {
		t.Fatalf("VerifyStream on a trimmed stream = %+v, %v", rep, err)
	}
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	if err := l.Record(ctx, broker.Event{Type: "later"}); err != nil {
		t.Fatal(err)
	}
	if n := c.XLen(ctx, "valet:audit").Val(); n != 1 {
		t.Fatalf("stream holds %d entries after everything else passed its retention, want 1", n)
	}
	if _, err := VerifyStream(ctx, c, "valet"); err != nil {
		t.Fatal(err)
	}
}

// TestRedisWriterDurableWithoutReplicaFails: with redis.durability replica
// an append no replica acknowledged fails, so the action it records fails
// too; with a replica it lands.
func TestRedisWriterDurableWithoutReplicaFails(t *testing.T) {
	w, err := replwait.New(1, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	alone := redistest.Start(t)
	sink, err := NewRedisWriter(alone.Client(t), RedisWriterOptions{Durable: w})
	if err != nil {
		t.Fatal(err)
	}
	ev := broker.Event{Time: time.Now(), Type: "task.declared", TaskID: "tsk_1", Outcome: "granted"}
	if err := NewLog(sink).Record(t.Context(), ev); !errors.Is(err, replwait.ErrNotReplicated) {
		t.Fatalf("append without a replica = %v, want ErrNotReplicated", err)
	}
	paired := redistest.Start(t)
	redistest.StartReplica(t, paired)
	sink, err = NewRedisWriter(paired.Client(t), RedisWriterOptions{Durable: w})
	if err != nil {
		t.Fatal(err)
	}
	if err := NewLog(sink).Record(t.Context(), ev); err != nil {
		t.Fatalf("append with a replica: %v", err)
	}
}
