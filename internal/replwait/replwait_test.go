package replwait_test

import (
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/replwait"
)

var setScript = redis.NewScript(`
if ARGV[1] == 'fail' then return redis.error_reply('TESTFAIL asked to') end
redis.call('SET', KEYS[1], ARGV[1])
return 'OK'`)

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		n int
		d time.Duration
	}{{0, time.Second}, {1, 0}, {1, -time.Second}} {
		if _, err := replwait.New(tc.n, tc.d); err == nil {
			t.Errorf("New(%d, %v) accepted", tc.n, tc.d)
		}
	}
}

func TestRun(t *testing.T) {
	ctx := t.Context()
	// A short timeout where no replica can answer; a generous one where a
	// replica must (a loaded machine, or a cluster replica still finishing
	// its first sync, can take longer than a production timeout).
	w, err := replwait.New(1, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	patient, err := replwait.New(1, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("no replica fails after the write landed", func(t *testing.T) {
		srv := redistest.Start(t)
		c := srv.Client(t)
		err := w.Run(ctx, c, setScript, []string{"k"}, "v").Err()
		if !errors.Is(err, replwait.ErrNotReplicated) {
			t.Fatalf("Run without a replica = %v, want ErrNotReplicated", err)
		}
		if got, _ := c.Get(ctx, "k").Result(); got != "v" {
			t.Errorf("the write is not on the primary: %q", got)
		}
	})
	t.Run("replica acknowledges", func(t *testing.T) {
		srv := redistest.Start(t)
		replica := redistest.StartReplica(t, srv)
		c := srv.Client(t)
		// The first Run meets NOSCRIPT and sends the script whole; the
		// second runs it by its SHA.
		for i := range 2 {
			if got, err := patient.Run(ctx, c, setScript, []string{"k"}, "v").Text(); err != nil || got != "OK" {
				t.Fatalf("Run %d with a replica = %q, %v; want OK", i, got, err)
			}
		}
		if got, _ := replica.Client(t).Get(ctx, "k").Result(); got != "v" {
			t.Errorf("the replica does not hold the write: %q", got)
		}
		err := patient.Run(ctx, c, setScript, []string{"k"}, "fail").Err()
		if !redis.HasErrorPrefix(err, "TESTFAIL") || errors.Is(err, replwait.ErrNotReplicated) {
			t.Errorf("a failing script = %v, want its own error", err)
		}
	})
	t.Run("cluster goes to the key's primary", func(t *testing.T) {
		cl := redistest.StartCluster(t, 3, 1)
		cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs()})
		t.Cleanup(func() { cc.Close() })
		for _, k := range []string{"{a}:x", "{b}:x", "{c}:x"} {
			if err := patient.Run(ctx, cc, setScript, []string{k}, "v").Err(); err != nil {
				t.Fatalf("Run on %s in a cluster: %v", k, err)
			}
			if got, _ := cc.Get(ctx, k).Result(); got != "v" {
				t.Errorf("%s = %q, want v", k, got)
			}
		}
	})
}
