package revocation_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
)

// TestEndDueSharedByReplicas guards issue 9 #10: the reaper ended one task
// per round trip, and replicas walked the same due list. EndDue ends a
// batch in one script and takes it off the deadlines in the same step, so
// two replicas reaping at once end every due task exactly once between
// them, and leave tasks not yet due alone.
func TestEndDueSharedByReplicas(t *testing.T) {
	srv := redistest.Start(t)
	ledgers := map[string][2]broker.DueEnder{}
	a := newRedisLedger(t, newClient(t, srv.URL()), revocation.RedisOptions{})
	b := newRedisLedger(t, newClient(t, srv.URL()), revocation.RedisOptions{})
	ledgers["redis"] = [2]broker.DueEnder{a, b}
	mem := revocation.NewMemoryLedger(time.Now, time.Hour)
	ledgers["memory"] = [2]broker.DueEnder{mem, mem}
	for name, pair := range ledgers {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			rec := pair[0].(broker.Ledger)
			now := time.Now()
			const due, notDue = 300, 20
			for i := range due + notDue {
				ttl := -time.Duration(i+1) * time.Millisecond
				if i >= due {
					ttl = time.Hour
				}
				task := activeTask(fmt.Sprintf("%s-%d", name, i), now, ttl)
				task.CreatedAt = now.Add(-time.Hour)
				exp := now.Add(time.Hour)
				if ttl < 0 {
					exp = task.Deadline
				}
				if err := rec.Record(ctx, task, []broker.Credential{jwt(task.ID, "jti-"+task.ID, exp)}); err != nil {
					t.Fatalf("Record: %v", err)
				}
			}
			var mu sync.Mutex
			seen := map[string]int{}
			var wg sync.WaitGroup
			for _, l := range pair {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						batch, err := l.EndDue(ctx, now, 64, "deadline passed")
						if err != nil {
							t.Errorf("EndDue: %v", err)
							return
						}
						if len(batch) == 0 {
							return
						}
						mu.Lock()
						for _, e := range batch {
							seen[e.Task.ID]++
							if e.Task.State != broker.StateExpired || len(e.Creds) != 1 {
								t.Errorf("ended task %s: %s with %d credentials", e.Task.ID, e.Task.State, len(e.Creds))
							}
						}
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if len(seen) != due {
				t.Fatalf("%d tasks ended, want %d", len(seen), due)
			}
			for id, n := range seen {
				if n != 1 {
					t.Fatalf("task %s ended %d times", id, n)
				}
				if _, denied, err := rec.Credential(ctx, "jti-"+id); err != nil || !denied {
					t.Fatalf("credential of reaped task %s: denied %v, %v", id, denied, err)
				}
			}
			if ids, err := rec.Due(ctx, now, 1000); err != nil || len(ids) != 0 {
				t.Fatalf("still due after reaping: %v %v", ids, err)
			}
			if ids, err := rec.Due(ctx, now.Add(2*time.Hour), 1000); err != nil || len(ids) != notDue {
				t.Fatalf("tasks not yet due: %d %v, want %d left alone", len(ids), err, notDue)
			}
		})
	}
}
