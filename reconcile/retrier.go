package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/valet-dev/valet/broker"
)

// retryBatch is how many due revocations one queue read takes.
const retryBatch = 256

// RetrierConfig holds a Retrier's dependencies. Queue, Issuers and Auditor
// are required.
type RetrierConfig struct {
	// Queue is the durable queue the Service puts failed revocations on
	// (broker.Config.RevocationQueue).
	Queue broker.RevocationQueue
	// Issuers revoke the queued credentials, by kind (broker.IssuersByKind):
	// pass the Service's task token issuer and its other issuers.
	Issuers []broker.Issuer
	Auditor broker.Auditor
	Now     func() time.Time
	Logger  *slog.Logger
}

// Retrier retries failed revocations at their source until they succeed
// or the credential expires by itself (rule 5). Several brokers may share
// one queue: revoking twice is harmless. It is safe for concurrent use.
type Retrier struct {
	q       broker.RevocationQueue
	issuers map[broker.CredentialKind]broker.Issuer
	audit   broker.Auditor
	now     func() time.Time
	log     *slog.Logger

	retried, retryFailed, expired atomic.Uint64
}

// RetryStats counts what a Retrier did since it was built.
type RetryStats struct {
	Retried          uint64 // revoked by a retry
	RetryFailed      uint64 // retries that failed and were queued again
	ExpiredUnrevoked uint64 // dropped from the queue because the credential expired first
}

// NewRetrier checks cfg and builds a Retrier.
func NewRetrier(cfg RetrierConfig) (*Retrier, error) {
	if cfg.Queue == nil || cfg.Auditor == nil {
		return nil, errors.New("reconcile: the retrier's queue and auditor cannot be nil")
	}
	byKind, err := broker.IssuersByKind(cfg.Issuers)
	if err != nil {
		return nil, err
	}
	r := &Retrier{q: cfg.Queue, issuers: byKind, audit: cfg.Auditor}
	r.log, r.now = orDefault(cfg.Logger, cfg.Now)
	return r, nil
}

// Stats returns the Retrier's counters.
func (r *Retrier) Stats() RetryStats {
	return RetryStats{Retried: r.retried.Load(), RetryFailed: r.retryFailed.Load(), ExpiredUnrevoked: r.expired.Load()}
}

// Once makes every due attempt of the queue and reports how many
// credentials it revoked. A credential whose own expiry has passed is
// dropped with an Error log and a revocation.failed audit record: it is
// dead at its source by then, but nobody revoked it (unless its issuer
// says it outlives that expiry: broker.OutlivesExpiry).
func (r *Retrier) Once(ctx context.Context) (int, error) {
	revoked := 0
	for {
		qctx, cancel := broker.LedgerCtx(ctx)
		due, err := r.q.Due(qctx, r.now(), retryBatch)
		cancel()
		if err != nil {
			return revoked, fmt.Errorf("listing due revocations: %w", err)
		}
		for _, p := range due {
			ok, err := r.retry(ctx, p)
			if err != nil {
				return revoked, err
			}
			if ok {
				revoked++
			}
		}
		if len(due) < retryBatch {
			return revoked, nil
		}
	}
}

// Run calls Once every interval until ctx ends.
func (r *Retrier) Run(ctx context.Context, interval time.Duration) {
	run(ctx, interval, r.log, "revocation retry", r.Once)
}

// retry makes one attempt at p. It reports whether the credential was
// revoked; an error means the queue itself failed.
func (r *Retrier) retry(ctx context.Context, p broker.PendingRevocation) (bool, error) {
	c := p.Credential
	done := func() error {
		qctx, cancel := broker.LedgerCtx(ctx)
		defer cancel()
		if err := r.q.Done(qctx, p.ID); err != nil {
			return fmt.Errorf("removing revocation %s from the queue: %w", p.ID, err)
		}
		return nil
	}
	is, ok := r.issuers[c.Kind]
	expired := !r.now().Before(c.ExpiresAt)
	if oe, isOE := is.(broker.OutlivesExpiry); expired && (!ok || !isOE || !oe.OutlivesExpiry(c)) {
		r.expired.Add(1)
		r.log.ErrorContext(ctx, "expired unrevoked: credential reached its own expiry before a revocation succeeded",
			"kind", c.Kind, "credential", c.ID, "task_id", c.TaskID, "expires_at", c.ExpiresAt, "attempts", p.Attempt, "last_error", p.LastError)
		r.auditFailed(ctx, c, p.Attempt, "expired unrevoked", errors.New(p.LastError))
		return false, done()
	}
	if !ok {
		r.log.ErrorContext(ctx, "no issuer for a queued revocation; dropping it", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID)
		return false, done()
	}
	rctx, cancel := context.WithTimeout(ctx, revokeTimeout)
	err := is.Revoke(rctx, c)
	cancel()
	if err != nil {
		r.retryFailed.Add(1)
		r.log.WarnContext(ctx, "revocation retry failed", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID,
			"attempt", p.Attempt+1, "err", err)
		if expired {
			// Live at its source past the expiry Valet recorded: say so
			// every time, until it is dead.
			r.auditFailed(ctx, c, p.Attempt+1, "live at its source past its expiry", err)
		}
		next := r.now().Add(broker.Backoff(p.Attempt + 1))
		qctx, cancel := broker.LedgerCtx(ctx)
		defer cancel()
		if err := r.q.Enqueue(qctx, c, p.Attempt+1, next, err.Error()); err != nil {
			return false, fmt.Errorf("re-queueing revocation %s: %w", p.ID, err)
		}
		return false, nil
	}
	r.retried.Add(1)
	r.log.InfoContext(ctx, "credential revoked at its source by a retry", "kind", c.Kind, "credential", c.ID,
		"task_id", c.TaskID, "attempt", p.Attempt+1)
	return true, done()
}

// auditFailed records broker.RevocationFailedEvent; a failed audit write
// is logged (the queue keeps its entry either way).
func (r *Retrier) auditFailed(ctx context.Context, c broker.Credential, attempt int, why string, cause error) {
	ev := broker.RevocationFailedEvent(ctx, r.now(), c, attempt, why, cause)
	if err := r.audit.Record(context.WithoutCancel(ctx), ev); err != nil {
		r.log.ErrorContext(ctx, "audit write of a failed revocation failed", "credential", c.ID, "task_id", c.TaskID, "err", err)
	}
}
