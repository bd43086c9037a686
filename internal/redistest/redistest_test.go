package redistest_test

import (
	"context"
	"errors"
	"testing"

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
