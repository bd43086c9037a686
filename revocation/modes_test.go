package revocation_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/replwait"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/conformance"
)

// modeClients returns a constructor of clients, the way production builds
// them (NewModeClient), of a fresh deployment of mode.
func modeClients(t *testing.T, mode string) func(t *testing.T) redis.UniversalClient {
	t.Helper()
	var o revocation.ModeOptions
	switch mode {
	case revocation.ModeSingle:
		o = revocation.ModeOptions{Mode: mode, URL: redistest.Start(t).URL()}
	case revocation.ModeSentinel:
		st := redistest.StartSentinel(t)
		o = revocation.ModeOptions{Mode: mode, Addrs: st.SentinelAddrs(), MasterName: st.MasterName}
	case revocation.ModeCluster:
		o = revocation.ModeOptions{Mode: mode, Addrs: redistest.StartCluster(t, 3, 1).Addrs()}
	}
	return func(t *testing.T) redis.UniversalClient {
		c, err := revocation.NewModeClient(o)
		if err != nil {
			t.Fatalf("NewModeClient(%s): %v", mode, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

// numSub counts the subscribers of channel, on every node of a cluster.
func numSub(t *testing.T, c redis.UniversalClient, channel string) int64 {
	t.Helper()
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		subs, err := c.PubSubNumSub(t.Context(), channel).Result()
		if err != nil {
			t.Fatal(err)
		}
		return subs[channel]
	}
	var mu sync.Mutex
	var n int64
	err := cc.ForEachShard(t.Context(), func(ctx context.Context, node *redis.Client) error {
		subs, err := node.PubSubNumSub(ctx, channel).Result()
		mu.Lock()
		n += subs[channel]
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestConformanceOnEveryMode runs every Redis store's conformance suite on
// one Redis, a Sentinel-watched primary and a Redis Cluster (3 primaries,
// 3 replicas), each store under a prefix that is one hash tag, as a
// cluster requires.
func TestConformanceOnEveryMode(t *testing.T) {
	for _, mode := range []string{revocation.ModeSingle, revocation.ModeSentinel, revocation.ModeCluster} {
		t.Run(mode, func(t *testing.T) {
			newClient := modeClients(t, mode)
			shared := newClient(t)
			var n atomic.Int64
			prefix := func() string { return fmt.Sprintf("{%s%d}", mode, n.Add(1)) }
			ledger := func(t *testing.T, c redis.UniversalClient, clock *conformance.Clock, p string) *revocation.RedisLedger {
				return newRedisLedger(t, c, revocation.RedisOptions{Prefix: p, Now: clock.Now, Logger: quiet, ReapLease: 200 * time.Millisecond})
			}
			t.Run("ledger", func(t *testing.T) {
				conformance.Ledger(t, func(t *testing.T, clock *conformance.Clock) broker.Ledger {
					return ledger(t, shared, clock, prefix())
				}, redisOptions)
			})
			t.Run("records", func(t *testing.T) {
				conformance.Records(t, func(t *testing.T, clock *conformance.Clock) broker.Records {
					return ledger(t, shared, clock, prefix())
				}, conformance.Options{RealClockExpiry: "TestRedisRecordsExpire (the TTL of every record key)"})
			})
			t.Run("limiter", func(t *testing.T) {
				conformance.Limiter(t, func(t *testing.T, clock *conformance.Clock) broker.Limiter {
					return ledger(t, shared, clock, prefix())
				}, conformance.Options{RealClockExpiry: "TestRedisRecordsExpire (the TTL of every one-time use and counter key)"})
			})
			t.Run("feed", func(t *testing.T) {
				conformance.Feed(t, func(t *testing.T, clock *conformance.Clock) (broker.Ledger, broker.Feed) {
					l := ledger(t, shared, clock, prefix())
					return l, l.Feed()
				})
			})
			t.Run("dueender", func(t *testing.T) {
				o := redisOptions
				o.ReapLease = 200 * time.Millisecond
				conformance.DueEnder(t, func(t *testing.T, clock *conformance.Clock) (a, b broker.Ledger) {
					p := prefix()
					return ledger(t, newClient(t), clock, p), ledger(t, newClient(t), clock, p)
				}, o)
			})
			t.Run("queue", func(t *testing.T) {
				conformance.Queue(t, func(t *testing.T, _ *conformance.Clock) broker.RevocationQueue {
					q, err := revocation.NewRedisQueue(shared, revocation.RedisOptions{Prefix: prefix()})
					if err != nil {
						t.Fatal(err)
					}
					return q
				})
			})
			t.Run("controls", func(t *testing.T) {
				conformance.Controls(t, func(t *testing.T) (broker.ControlStore, broker.ControlStore) {
					p := prefix()
					replica := func() broker.ControlStore {
						s, err := revocation.NewControls(newClient(t), p, time.Hour)
						if err != nil {
							t.Fatal(err)
						}
						ctx, cancel := context.WithCancel(context.Background())
						done := make(chan struct{})
						go func() { defer close(done); s.Run(ctx) }()
						t.Cleanup(func() { cancel(); <-done })
						return s
					}
					a, b := replica(), replica()
					testkit.Eventually(t, func() bool { return numSub(t, shared, p+":controls:changed") == 2 },
						"both replicas to subscribe to change notices")
					return a, b
				})
			})
		})
	}
}

// TestClusterRejectsPrefixesThatSplitSlots: in a cluster, a store whose
// keys would land in several slots is refused at construction, not at the
// first CROSSSLOT error.
func TestClusterRejectsPrefixesThatSplitSlots(t *testing.T) {
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	defer c.Close()
	for _, p := range []string{"valet", "{}valet", "va{let", "{", "a}{"} {
		if _, err := revocation.NewRedisLedger(c, revocation.RedisOptions{Prefix: p}); err == nil {
			t.Errorf("ledger prefix %q accepted in a cluster", p)
		}
		if _, err := revocation.NewRedisQueue(c, revocation.RedisOptions{Prefix: p}); err == nil {
			t.Errorf("queue prefix %q accepted in a cluster", p)
		}
		if _, err := revocation.NewControls(c, p, time.Second); err == nil {
			t.Errorf("controls prefix %q accepted in a cluster", p)
		}
	}
	for _, p := range []string{"{valet}", "prod{valet}", "{a}:b", "x{y}z"} {
		if err := revocation.CheckClusterPrefix(p); err != nil {
			t.Errorf("CheckClusterPrefix(%q) = %v, want nil", p, err)
		}
	}
	if _, err := revocation.NewRedisLedger(c, revocation.RedisOptions{}); err == nil {
		t.Error(`the default prefix "valet" accepted in a cluster`)
	}
}

func TestModeOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		o    revocation.ModeOptions
		want []string
	}{
		{name: "single ok", o: revocation.ModeOptions{URL: "redis://x:1"}},
		{name: "sentinel ok", o: revocation.ModeOptions{Mode: "sentinel", Addrs: []string{"a:1"}, MasterName: "m"}},
		{name: "cluster ok", o: revocation.ModeOptions{Mode: "cluster", Addrs: []string{"a:1", "b:2"}}},
		{name: "unknown mode", o: revocation.ModeOptions{Mode: "ring"}, want: []string{"redis.mode"}},
		{name: "sentinel lacks all", o: revocation.ModeOptions{Mode: "sentinel"}, want: []string{"redis.addrs", "redis.master_name"}},
		{name: "cluster bad addr", o: revocation.ModeOptions{Mode: "cluster", Addrs: []string{"nohost"}, MasterName: "m"},
			want: []string{"redis.addrs[0]", "redis.master_name"}},
		{name: "single with addrs", o: revocation.ModeOptions{Addrs: []string{"a:1"}}, want: []string{"redis.addrs"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.o.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate = nil, want errors naming %v", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %v, want it to name %s", err, w)
				}
			}
		})
	}
}

// TestDurableRecordWithoutReplicaFailsClosed: with a replica wait and no
// replica to acknowledge, Record fails as unavailable (a 503 for the
// declaration), and the task it wrote on the primary is ended at once, its
// credentials denied, so nothing lives on one side of a failover only.
func TestDurableRecordWithoutReplicaFailsClosed(t *testing.T) {
	ctx := t.Context()
	w, err := replwait.New(1, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, redistest.Start(t).URL())
	l := newRedisLedger(t, c, revocation.RedisOptions{Prefix: "{d}", Durable: w, Logger: quiet})
	now := time.Now()
	task := broker.Task{ID: "tsk_durable", State: broker.StateActive, Agent: "a", Issuer: "i", Template: "t",
		Intent: "durability", Tools: []string{"x"}, CreatedAt: now, Deadline: now.Add(time.Minute)}
	creds := []broker.Credential{{ID: "jti_durable", Kind: broker.KindJWT, TaskID: task.ID, IssuedAt: now, ExpiresAt: now.Add(time.Minute)}}
	err = l.Record(ctx, task, creds)
	if !errors.Is(err, broker.ErrUnavailable) || !errors.Is(err, replwait.ErrNotReplicated) {
		t.Fatalf("Record without a replica = %v, want ErrUnavailable and ErrNotReplicated", err)
	}
	got, _, err := l.Task(ctx, task.ID)
	if err != nil || got.State != broker.StateRevoked || got.EndReason != revocation.NotReplicatedReason {
		t.Errorf("task after the refused record = %s %q (%v), want revoked %q", got.State, got.EndReason, err, revocation.NotReplicatedReason)
	}
	if _, denied, err := l.Credential(ctx, creds[0].ID); err != nil || !denied {
		t.Errorf("credential after the refused record: denied %v (%v), want denied", denied, err)
	}

	// With a replica the same write is answered.
	srv := redistest.Start(t)
	redistest.StartReplica(t, srv)
	l = newRedisLedger(t, newClient(t, srv.URL()), revocation.RedisOptions{Prefix: "{d}", Durable: w, Logger: quiet})
	if err := l.Record(ctx, task, creds); err != nil {
		t.Fatalf("Record with a replica: %v", err)
	}
}

// BenchmarkRecordDurability: one Record answered by the primary, and one
// answered only once a replica has it (WAIT 1), on one primary with one
// replica on loopback. Compare the two ns/op.
func BenchmarkRecordDurability(b *testing.B) {
	srv := redistest.Start(b)
	redistest.StartReplica(b, srv)
	w, err := replwait.New(1, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64 // task ids unique across every run of the sub-benchmarks
	for _, bc := range []struct {
		name    string
		durable *replwait.Waiter
	}{{"primary", nil}, {"replica", w}} {
		b.Run(bc.name, func(b *testing.B) {
			c, err := revocation.NewModeClient(revocation.ModeOptions{URL: srv.URL(), MinReadTimeout: 2 * time.Second})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			l := newRedisLedger(b, c, revocation.RedisOptions{Prefix: "{bench-" + bc.name + "}", Durable: bc.durable, Logger: quiet})
			ctx := context.Background()
			now := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					id := fmt.Sprintf("tsk_%d", n.Add(1))
					task := broker.Task{ID: id, State: broker.StateActive, Agent: "a", Issuer: "i", Template: "t",
						Intent: "bench", Tools: []string{"x"}, CreatedAt: now, Deadline: now.Add(time.Minute)}
					creds := []broker.Credential{{ID: "jti_" + id, Kind: broker.KindJWT, TaskID: id, IssuedAt: now, ExpiresAt: now.Add(time.Minute)}}
					if err := l.Record(ctx, task, creds); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
