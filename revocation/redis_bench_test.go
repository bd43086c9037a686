package revocation_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
)

// BenchmarkRedisRecord measures Record of a task with two credentials
// against a private redis-server; compare with BenchmarkMemoryRecord from the
// same run.
func BenchmarkRedisRecord(b *testing.B) {
	c := newClient(b, redistest.Start(b).URL())
	benchmarkRecord(b, newRedisLedger(b, c, revocation.RedisOptions{}))
}

func BenchmarkMemoryRecord(b *testing.B) {
	benchmarkRecord(b, revocation.NewMemoryLedger(time.Now, time.Hour))
}

func benchmarkRecord(b *testing.B, l broker.Ledger) {
	ctx := b.Context()
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			now := time.Now()
			task := activeTask(fmt.Sprint("bench-", n.Add(1)), now, time.Hour)
			creds := []broker.Credential{
				jwt(task.ID, "jti-1-"+task.ID, now.Add(time.Minute)),
				{ID: "accessor-" + task.ID, Kind: broker.KindVaultToken, TaskID: task.ID, IssuedAt: now, ExpiresAt: now.Add(time.Minute)},
			}
			if err := l.Record(ctx, task, creds); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
