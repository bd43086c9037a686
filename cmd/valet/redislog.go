package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
)

// redisLogger routes go-redis's own log lines (dial failures, pool and
// pub/sub notices) through slog, so they reach the JSON log as Warn
// records with the rest, never as raw lines on stderr. A line that
// repeats the one before within a minute (Redis down: a dial failure per
// attempt) is counted, not logged again. Install it with redis.SetLogger.
type redisLogger struct {
	log *slog.Logger

	mu       sync.Mutex
	last     string
	lastAt   time.Time
	repeated int
}

func newRedisLogger(log *slog.Logger) *redisLogger { return &redisLogger{log: log} }

// Printf implements go-redis's internal Logging interface.
func (l *redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if ctx == nil {
		ctx = context.Background()
	}
	detail := broker.Bound(fmt.Sprintf(format, v...), broker.MaxAuditString)
	now := time.Now()
	l.mu.Lock()
	if detail == l.last && now.Sub(l.lastAt) < time.Minute {
		l.repeated++
		l.mu.Unlock()
		return
	}
	repeated := l.repeated
	l.last, l.lastAt, l.repeated = detail, now, 0
	l.mu.Unlock()
	attrs := []slog.Attr{slog.String("detail", detail)}
	if repeated > 0 {
		attrs = append(attrs, slog.Int("previous_line_repeated", repeated))
	}
	l.log.LogAttrs(ctx, slog.LevelWarn, "redis client", attrs...)
}
