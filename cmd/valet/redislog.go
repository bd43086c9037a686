package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/valet-dev/valet/broker"
)

// redisLogger routes go-redis's own log lines (dial failures, pool and
// pub/sub notices) through slog, so they reach the JSON log as Warn
// records with the rest, never as raw lines on stderr. Install it with
// redis.SetLogger.
type redisLogger struct{ log *slog.Logger }

// Printf implements go-redis's internal Logging interface.
func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if ctx == nil {
		ctx = context.Background()
	}
	l.log.LogAttrs(ctx, slog.LevelWarn, "redis client",
		slog.String("detail", broker.Bound(fmt.Sprintf(format, v...), broker.MaxAuditString)))
}
