package revocation

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
)

// livePage is how many deadline entries one round trip of LiveCounts reads.
const livePage = 1000

// LiveCounts counts, across every replica, the active tasks whose deadline
// is after now and the credentials they hold. It walks the deadline index
// with ZSCAN and LLEN, one page of livePage tasks per round trip, so Redis
// never blocks on it; it is meant for a metrics scrape (cached by the
// caller), not for request paths.
func (l *RedisLedger) LiveCounts(ctx context.Context, now time.Time) (tasks, creds int64, err error) {
	nowMs := now.UnixMilli()
	var cursor uint64
	for {
		vals, next, err := l.c.ZScan(ctx, l.keys.deadlines(), cursor, "", livePage).Result()
		if err != nil {
			return 0, 0, wrapErr("counting live tasks", err)
		}
		var lens []*redis.IntCmd
		_, err = l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := 0; i+1 < len(vals); i += 2 {
				if ms, perr := strconv.ParseFloat(vals[i+1], 64); perr != nil || int64(ms) <= nowMs {
					continue // past its deadline: its credentials have expired by themselves
				}
				lens = append(lens, p.LLen(ctx, l.keys.taskCreds(vals[i])))
			}
			return nil
		})
		if err != nil {
			return 0, 0, wrapErr("counting live credentials", err)
		}
		for _, n := range lens {
			tasks++
			creds += n.Val()
		}
		if cursor = next; cursor == 0 {
			return tasks, creds, nil
		}
	}
}

// LiveCounts is RedisLedger.LiveCounts for the memory ledger.
func (l *MemoryLedger) LiveCounts(_ context.Context, now time.Time) (tasks, creds int64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, mt := range l.tasks {
		if mt.task.State == broker.StateActive && mt.task.Deadline.After(now) {
			tasks++
			creds += int64(len(mt.creds))
		}
	}
	return tasks, creds, nil
}
