package redistest_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/internal/redistest"
)

func TestRestartKeepsDataOnlyWithAOF(t *testing.T) {
	tests := []struct {
		name string
		opts []redistest.Option
		keep bool
	}{
		{name: "no persistence", keep: false},
		{name: "aof", opts: []redistest.Option{redistest.WithAOF()}, keep: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			srv := redistest.Start(t, tt.opts...)
			opt, err := redis.ParseURL(srv.URL())
			if err != nil {
				t.Fatal(err)
			}
			opt.MaxRetries = -1
			c := redis.NewClient(opt)
			t.Cleanup(func() { c.Close() })

			if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatalf("SET: %v", err)
			}
			srv.Kill()
			if err := c.Ping(ctx).Err(); err == nil {
				t.Fatal("PING answered after Kill")
			}
			srv.Restart()
			got, err := c.Get(ctx, "k").Result()
			switch {
			case tt.keep && err != nil:
				t.Fatalf("GET after restart: %v", err)
			case tt.keep && got != "v":
				t.Fatalf("GET after restart = %q, want %q", got, "v")
			case !tt.keep && !errors.Is(err, redis.Nil):
				t.Fatalf("GET after restart = %q, %v; want redis.Nil", got, err)
			}
		})
	}
}

func TestServersArePrivate(t *testing.T) {
	a, b := redistest.Start(t), redistest.Start(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("two servers share %s", a.Addr())
	}
}

func TestStartClusterAndSentinel(t *testing.T) {
	ctx := context.Background()
	t.Run("cluster", func(t *testing.T) {
		c := redistest.StartCluster(t, 3, 1)
		cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
		t.Cleanup(func() { cc.Close() })
		for _, k := range []string{"a", "b", "c", "{x}:1"} {
			if err := cc.Set(ctx, k, "v", 0).Err(); err != nil {
				t.Fatalf("SET %s: %v", k, err)
			}
		}
		var n atomic.Int64
		err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			n.Add(1)
			return nil
		})
		if err != nil || n.Load() != 3 {
			t.Fatalf("masters = %d (%v), want 3", n.Load(), err)
		}
	})
	t.Run("sentinel", func(t *testing.T) {
		st := redistest.StartSentinel(t)
		fc := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: st.MasterName, SentinelAddrs: st.SentinelAddrs()})
		t.Cleanup(func() { fc.Close() })
		if err := fc.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatalf("SET through sentinel: %v", err)
		}
		if got, err := st.Primary.Client(t).Get(ctx, "k").Result(); err != nil || got != "v" {
			t.Errorf("GET k on the primary = %q, %v; want the value written through Sentinel", got, err)
		}
		if n, err := fc.Wait(ctx, 1, time.Second).Result(); err != nil || n != 1 {
			t.Errorf("WAIT 1 = %d, %v; want 1 (the replica)", n, err)
		}
	})
}
