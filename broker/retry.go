package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Backoff of revocation retries: exponential from retryBase, capped at
// retryCap, each wait jittered to between half and all of it.
const (
	retryBase  = time.Second
	retryCap   = time.Minute
	retryBatch = 256
)

// PendingRevocation is a revocation at the source that failed and waits for
// its next attempt.
type PendingRevocation struct {
	// ID names the entry in the queue: the credential's id.
	ID         string
	Credential Credential
	// Attempt counts the attempts made so far.
	Attempt   int
	Next      time.Time
	LastError string
}

// RevocationQueue is the durable record of revocations still to be done
// (rule 5: failed revocations are retried until the credential's own
// expiry). It must survive a broker restart, so the production one lives in
// Redis. Implementations must be safe for concurrent use by several brokers;
// errors wrap ErrUnavailable when the store cannot be reached.
type RevocationQueue interface {
	// Enqueue adds c, or replaces its entry, with the attempts made so far,
	// the time of the next attempt and the last error (ids only, never a
	// secret). The entry may disappear by itself some time after
	// c.ExpiresAt.
	Enqueue(ctx context.Context, c Credential, attempt int, next time.Time, lastErr string) error
	// Due lists up to limit entries whose next attempt is at or before now,
	// earliest first.
	Due(ctx context.Context, now time.Time, limit int) ([]PendingRevocation, error)
	// Done removes an entry; removing one that is gone is not an error.
	Done(ctx context.Context, id string) error
	// Pending counts the entries.
	Pending(ctx context.Context) (int, error)
}

// NotRevokedError is returned by an issuer whose Mint failed after it made
// credentials it then could not revoke. The Service queues them for retry.
type NotRevokedError struct {
	Creds []Credential
	Err   error // the failure that stopped the mint
}

func (e *NotRevokedError) Error() string {
	return fmt.Sprintf("%v (and %d credential(s) made before it could not be revoked)", e.Err, len(e.Creds))
}

func (e *NotRevokedError) Unwrap() error { return e.Err }

// ErrRevocationPending: a task ended and its tokens are denied, but killing
// some of its credentials at their source failed; they are queued and
// retried until they expire by themselves.
var ErrRevocationPending = errors.New("revocation at the source is pending")

// RevocationStats counts what happened to revocations at the source since
// the Service started.
type RevocationStats struct {
	Revoked          uint64 // revoked at the first attempt
	Failed           uint64 // first attempts that failed
	Queued           uint64 // failures put on the retry queue
	QueueFailed      uint64 // failures that could not be queued (logged at Error)
	Retried          uint64 // revoked by a retry
	RetryFailed      uint64 // retries that failed and were queued again
	ExpiredUnrevoked uint64 // dropped from the queue because the credential expired first
	Reconciled       uint64 // orphans the reconciler revoked
}

type revocationCounters struct {
	revoked, failed, queued, queueFailed, retried, retryFailed, expired, reconciled atomic.Uint64
}

// Stats returns the revocation counters.
func (s *Service) Stats() RevocationStats {
	c := &s.counters
	return RevocationStats{
		Revoked: c.revoked.Load(), Failed: c.failed.Load(), Queued: c.queued.Load(), QueueFailed: c.queueFailed.Load(),
		Retried: c.retried.Load(), RetryFailed: c.retryFailed.Load(), ExpiredUnrevoked: c.expired.Load(),
		Reconciled: c.reconciled.Load(),
	}
}

// backoff is the wait before attempt number attempt+1, jittered.
func backoff(attempt int) time.Duration {
	d := retryCap
	if attempt < 7 {
		d = min(retryBase<<max(attempt-1, 0), retryCap)
	}
	return d/2 + rand.N(d/2+1)
}

// queueRevocation puts a failed revocation on the retry queue, or logs at
// Error that it is lost when there is no queue or the queue is down.
func (s *Service) queueRevocation(ctx context.Context, c Credential, attempt int, cause error) {
	next := s.now().Add(backoff(attempt))
	if s.retryQ == nil {
		s.counters.queueFailed.Add(1)
		s.log.ErrorContext(ctx, "no retry queue configured; credential stays live until it expires", "kind", c.Kind, "credential", c.ID,
			"task_id", c.TaskID, "expires_at", c.ExpiresAt)
		return
	}
	qctx, cancel := LedgerCtx(context.WithoutCancel(ctx))
	err := s.retryQ.Enqueue(qctx, c, attempt, next, cause.Error())
	cancel()
	if err != nil {
		s.counters.queueFailed.Add(1)
		s.log.ErrorContext(ctx, "queueing a failed revocation failed; credential stays live until it expires", "kind", c.Kind,
			"credential", c.ID, "task_id", c.TaskID, "expires_at", c.ExpiresAt, "err", err)
		return
	}
	s.counters.queued.Add(1)
	s.log.WarnContext(ctx, "revocation queued for retry", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID,
		"attempt", attempt, "next", next)
}

// auditRevocationFailed records that a credential could not be killed at its
// source (ids and the error only). A failed audit write is logged: the
// revocation is queued either way.
func (s *Service) auditRevocationFailed(ctx context.Context, c Credential, attempt int, why string, cause error) {
	ev := s.TaskEvent(ctx, "revocation.failed", "valet", Task{ID: c.TaskID})
	ev.Outcome, ev.Reason, ev.Creds = "failed", why, []string{c.ID}
	ev.Detail = map[string]any{"kind": c.Kind, "attempt": attempt, "error": cause.Error(), "expires_at": c.ExpiresAt}
	if err := s.audit.Record(context.WithoutCancel(ctx), ev); err != nil {
		s.log.ErrorContext(ctx, "audit write of a failed revocation failed", "credential", c.ID, "task_id", c.TaskID, "err", err)
	}
}

// RetryOnce makes every due attempt of the retry queue and reports how many
// credentials it revoked. A credential whose own expiry has passed is
// dropped with an Error log: it is dead at its source by then, but nobody
// revoked it. Several brokers may share one queue: revoking twice is
// harmless.
func (s *Service) RetryOnce(ctx context.Context) (int, error) {
	if s.retryQ == nil {
		return 0, nil
	}
	revoked := 0
	for {
		qctx, cancel := LedgerCtx(ctx)
		due, err := s.retryQ.Due(qctx, s.now(), retryBatch)
		cancel()
		if err != nil {
			return revoked, fmt.Errorf("listing due revocations: %w", err)
		}
		for _, p := range due {
			ok, err := s.retry(ctx, p)
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

// retry makes one attempt at p. It reports whether the credential was
// revoked; an error means the queue itself failed.
func (s *Service) retry(ctx context.Context, p PendingRevocation) (bool, error) {
	c := p.Credential
	done := func() error {
		qctx, cancel := LedgerCtx(ctx)
		defer cancel()
		if err := s.retryQ.Done(qctx, p.ID); err != nil {
			return fmt.Errorf("removing revocation %s from the queue: %w", p.ID, err)
		}
		return nil
	}
	is, ok := s.issuers[c.Kind]
	expired := !s.now().Before(c.ExpiresAt)
	if oe, isOE := is.(OutlivesExpiry); expired && (!ok || !isOE || !oe.OutlivesExpiry(c)) {
		s.counters.expired.Add(1)
		s.log.ErrorContext(ctx, "expired unrevoked: credential reached its own expiry before a revocation succeeded",
			"kind", c.Kind, "credential", c.ID, "task_id", c.TaskID, "expires_at", c.ExpiresAt, "attempts", p.Attempt, "last_error", p.LastError)
		s.auditRevocationFailed(ctx, c, p.Attempt, "expired unrevoked", errors.New(p.LastError))
		return false, done()
	}
	if !ok {
		s.log.ErrorContext(ctx, "no issuer for a queued revocation; dropping it", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID)
		return false, done()
	}
	rctx, cancel := context.WithTimeout(ctx, defaultMintTimeout)
	err := is.Revoke(rctx, c)
	cancel()
	if err != nil {
		s.counters.retryFailed.Add(1)
		s.log.WarnContext(ctx, "revocation retry failed", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID,
			"attempt", p.Attempt+1, "err", err)
		if expired {
			// Live at its source past the expiry Valet recorded: say so
			// every time, until it is dead.
			s.auditRevocationFailed(ctx, c, p.Attempt+1, "live at its source past its expiry", err)
		}
		next := s.now().Add(backoff(p.Attempt + 1))
		qctx, cancel := LedgerCtx(ctx)
		defer cancel()
		if err := s.retryQ.Enqueue(qctx, c, p.Attempt+1, next, err.Error()); err != nil {
			return false, fmt.Errorf("re-queueing revocation %s: %w", p.ID, err)
		}
		return false, nil
	}
	s.counters.retried.Add(1)
	s.log.InfoContext(ctx, "credential revoked at its source by a retry", "kind", c.Kind, "credential", c.ID,
		"task_id", c.TaskID, "attempt", p.Attempt+1)
	return true, done()
}

// RunRetries calls RetryOnce every interval until ctx ends.
func (s *Service) RunRetries(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if n, err := s.RetryOnce(ctx); err != nil {
			s.log.ErrorContext(ctx, "revocation retry pass failed", "revoked", n, "err", err)
		} else if n > 0 {
			s.log.InfoContext(ctx, "revocation retries succeeded", "revoked", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
