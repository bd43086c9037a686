package revocation_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
)

// TestLiveCounts: live tasks and credentials are counted from the ledger:
// active tasks before their deadline only, with every credential they
// hold; ended tasks and tasks past their deadline are not live. (It
// replaces a per-process count that went negative after a restart.)
func TestLiveCounts(t *testing.T) {
	type counter interface {
		broker.Ledger
		LiveCounts(context.Context, time.Time) (int64, int64, error)
	}
	now := time.Now().Truncate(time.Millisecond)
	ledgers := map[string]counter{
		"redis":  newRedisLedger(t, newClient(t, redistest.Start(t).URL()), revocation.RedisOptions{}),
		"memory": revocation.NewMemoryLedger(func() time.Time { return now }, 0),
	}
	for name, l := range ledgers {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			record := func(id string, ttl time.Duration, creds int) {
				task := broker.Task{ID: id, State: broker.StateActive, Agent: "a", Issuer: "i", Template: "t", Intent: "x",
					Tools: []string{"x.y"}, CreatedAt: now, Deadline: now.Add(ttl)}
				var cs []broker.Credential
				for j := range creds {
					cs = append(cs, broker.Credential{ID: fmt.Sprintf("%s-c%d", id, j), Kind: broker.KindJWT, TaskID: id, IssuedAt: now, ExpiresAt: now.Add(ttl)})
				}
				if err := l.Record(ctx, task, cs); err != nil {
					t.Fatal(err)
				}
			}
			record("live-1", time.Hour, 1)
			record("live-2", time.Hour, 3)
			record("ended", time.Hour, 2)
			record("short", time.Second, 1)
			if _, _, err := l.End(ctx, "ended", broker.StateCompleted, "done", now); err != nil {
				t.Fatal(err)
			}
			tasks, creds, err := l.LiveCounts(ctx, now.Add(2*time.Second)) // "short" is past its deadline
			if err != nil || tasks != 2 || creds != 4 {
				t.Fatalf("LiveCounts = %d tasks, %d credentials, %v; want 2, 4", tasks, creds, err)
			}
		})
	}
}
