package revocation_test

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// BenchmarkRedisEndMany measures one EndMany of a full batch: 256 tasks of
// one JWT (broker.MaxEndMany), and 10 tasks of 100 JWTs (about
// broker.MaxEndManyCredentials): how long one batch script holds Redis
// (redis-ms/batch, from INFO commandstats), and the whole call. The tasks
// are recorded outside the timer.
func BenchmarkRedisEndMany(b *testing.B) {
	for _, shape := range []struct{ tasks, creds int }{{broker.MaxEndMany, 1}, {10, 100}} {
		b.Run(fmt.Sprintf("%dx%d", shape.tasks, shape.creds), func(b *testing.B) {
			ctx := b.Context()
			c := newClient(b, redistest.Start(b).URL())
			l := newRedisLedger(b, c, revocation.RedisOptions{Logger: quiet})
			now := time.Now()
			seed := func(name string) []string {
				ids := make([]string, shape.tasks)
				for k := range ids {
					task := activeTask(fmt.Sprintf("%s-%d", name, k), now, time.Hour)
					creds := make([]broker.Credential, shape.creds)
					for j := range creds {
						creds[j] = jwt(task.ID, fmt.Sprintf("jti-%d-%s", j, task.ID), now.Add(time.Minute))
					}
					if err := l.Record(ctx, task, creds); err != nil {
						b.Fatal(err)
					}
					ids[k] = task.ID
				}
				return ids
			}
			var redisUsec int64
			b.ReportAllocs()
			b.StopTimer()
			for i := range b.N {
				ids := seed(fmt.Sprint("many-", i))
				before := scriptUsec(b, c)
				b.StartTimer()
				res, err := l.EndMany(ctx, ids, broker.StateRevoked, "bench", now)
				b.StopTimer()
				if err != nil || len(res) != len(ids) || res[0].Outcome != broker.EndedNow {
					b.Fatalf("EndMany = %d results, %v", len(res), err)
				}
				redisUsec += scriptUsec(b, c) - before
			}
			b.ReportMetric(float64(redisUsec)/1000/float64(b.N), "redis-ms/batch")
		})
	}
}

// scriptUsec is the total time Redis spent in EVALSHA calls, in µs.
func scriptUsec(b *testing.B, c *redis.Client) int64 {
	info, err := c.Info(b.Context(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(info, "\r\n") {
		if rest, ok := strings.CutPrefix(line, "cmdstat_evalsha:"); ok {
			for f := range strings.SplitSeq(rest, ",") {
				if v, ok := strings.CutPrefix(f, "usec="); ok {
					n, _ := strconv.ParseInt(v, 10, 64)
					return n
				}
			}
		}
	}
	return 0
}

// BenchmarkRedisRecordCommands counts the commands Redis runs per
// declaration, as the bench's "Redis commands per declaration" row does
// (INFO commandstats: the EVALSHA itself and every command of its script),
// for a task with one JWT: the ledger alone, and as `valet serve` writes
// it, with the grant's audit line in the same script.
func BenchmarkRedisRecordCommands(b *testing.B) {
	for _, served := range []bool{false, true} {
		b.Run(map[bool]string{false: "ledger", true: "serve"}[served], func(b *testing.B) {
			ctx := b.Context()
			c := newClient(b, redistest.Start(b).URL())
			var l *revocation.RedisLedger
			if served {
				l, _, _ = servedLedger(b, c, "cmds")
			} else {
				l = newRedisLedger(b, c, revocation.RedisOptions{Prefix: "cmds", Logger: quiet})
			}
			if err := l.Ping(ctx); err != nil {
				b.Fatal(err)
			}
			now := time.Now().Truncate(time.Second)
			before := redisCalls(b, c)
			for i := range b.N {
				task := activeTask(fmt.Sprintf("cmds-%d-%d", b.N, i), now, 10*time.Minute)
				task.Agent = fmt.Sprint("agent-", i%32) // agents declare many tasks, as in the bench
				creds := []broker.Credential{jwt(task.ID, "jti-"+task.ID, task.Deadline)}
				if _, err := l.RecordGranted(ctx, task, creds, grantEvent(task, creds)); err != nil {
					b.Fatal(err)
				}
			}
			// The second INFO counts the first once.
			b.ReportMetric(float64(redisCalls(b, c)-before-1)/float64(b.N), "cmds/decl")
		})
	}
}

// redisCalls sums the calls of every command in INFO commandstats.
func redisCalls(b *testing.B, c *redis.Client) int64 {
	info, err := c.Info(b.Context(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for line := range strings.SplitSeq(info, "\r\n") {
		_, rest, ok := strings.Cut(line, ":calls=")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		total += v
	}
	return total
}
