// Package reconcile owns Valet's background repair loops, the work no
// request waits for: the reaper ends tasks past their deadline, the
// retrier retries revocations at the source that failed (rule 5), and the
// reconciler revokes credentials live at a source that the ledger does
// not account for. Each is built with explicit dependencies (the ports of
// package broker) and run by internal/server.
package reconcile

import (
	"context"
	"log/slog"
	"time"

	"github.com/valet-dev/valet/broker"
)

// Revoker kills credentials at their source the way a request does:
// children before parents, each failure counted, logged, audited and put
// on the retry queue; it reports how many failed. *broker.Service
// implements it. It must be safe for concurrent use.
type Revoker interface {
	RevokeAtSource(ctx context.Context, creds []broker.Credential, why string) (failed int)
}

// revokeTimeout bounds one revocation at a source.
const revokeTimeout = 5 * time.Second

// run calls once every interval until ctx ends, logging what failed.
func run(ctx context.Context, interval time.Duration, log *slog.Logger, what string, once func(context.Context) (int, error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if n, err := once(ctx); err != nil {
			log.ErrorContext(ctx, what+" pass failed", "done", n, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func orDefault(log *slog.Logger, now func() time.Time) (*slog.Logger, func() time.Time) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return log, now
}
