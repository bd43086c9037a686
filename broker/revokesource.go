package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/valet-dev/valet/internal/requestid"
)

// Backoff of revocation retries: exponential from retryBase, capped at
// retryCap, each wait jittered to between half and all of it.
const (
	retryBase = time.Second
	retryCap  = time.Minute
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

// RevocationStats counts what happened to revocations at the source made
// by the Service (request paths, the reaper and the reconciler through
// RevokeAtSource) since it started. The retrier (package reconcile) counts
// its own.
type RevocationStats struct {
	Revoked     uint64 // revoked at the first attempt
	Failed      uint64 // first attempts that failed
	Queued      uint64 // failures put on the retry queue
	QueueFailed uint64 // failures that could not be queued (logged at Error)
}

type revocationCounters struct {
	revoked, failed, queued, queueFailed atomic.Uint64
}

// Stats returns the revocation counters.
func (s *Service) Stats() RevocationStats {
	c := &s.counters
	return RevocationStats{Revoked: c.revoked.Load(), Failed: c.failed.Load(), Queued: c.queued.Load(), QueueFailed: c.queueFailed.Load()}
}

// IssuersByKind indexes issuers by the kinds of credential each revokes
// (its Kind and, for OtherKinds, AlsoRevokes). Two issuers of one kind are
// an error.
func IssuersByKind(issuers []Issuer) (map[CredentialKind]Issuer, error) {
	m := make(map[CredentialKind]Issuer, len(issuers))
	for _, is := range issuers {
		kinds := []CredentialKind{is.Kind()}
		if more, ok := is.(OtherKinds); ok {
			kinds = append(kinds, more.AlsoRevokes()...)
		}
		for _, k := range kinds {
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("broker: two issuers of kind %q", k)
			}
			m[k] = is
		}
	}
	return m, nil
}

// RevokeAtSource kills creds at their issuers, children before parents: a
// failure is counted, logged, audited (revocation.failed) and put on the
// retry queue. It reports how many failed. The reaper and the reconciler
// (package reconcile) kill credentials through it.
func (s *Service) RevokeAtSource(ctx context.Context, creds []Credential, why string) (failed int) {
	return s.revokeAtSource(ctx, creds, why)
}

// Backoff is the wait before attempt number attempt+1 of a revocation at
// the source: exponential from 1s, capped at 1m, jittered to between half
// and all of it. The retrier (package reconcile) schedules by it too.
func Backoff(attempt int) time.Duration {
	d := retryCap
	if attempt < 7 {
		d = min(retryBase<<max(attempt-1, 0), retryCap)
	}
	return d/2 + rand.N(d/2+1)
}

// queueRevocation puts a failed revocation on the retry queue, or logs at
// Error that it is lost when there is no queue or the queue is down.
func (s *Service) queueRevocation(ctx context.Context, c Credential, attempt int, cause error) {
	next := s.now().Add(Backoff(attempt))
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

// RevocationFailedEvent is the audit event of a credential that could not
// be killed at its source: ids and the error only, never a secret.
func RevocationFailedEvent(ctx context.Context, now time.Time, c Credential, attempt int, why string, cause error) Event {
	return Event{Time: now.UTC(), Type: "revocation.failed", RequestID: requestid.From(ctx), Actor: "valet", TaskID: c.TaskID,
		Outcome: "failed", Reason: why, Creds: []string{c.ID},
		Detail: map[string]any{"kind": c.Kind, "attempt": attempt, "error": cause.Error(), "expires_at": c.ExpiresAt}}
}

// auditRevocationFailed records RevocationFailedEvent. A failed audit write
// is logged: the revocation is queued either way.
func (s *Service) auditRevocationFailed(ctx context.Context, c Credential, attempt int, why string, cause error) {
	ev := RevocationFailedEvent(ctx, s.now(), c, attempt, why, cause)
	if err := s.audit.Record(context.WithoutCancel(ctx), ev); err != nil {
		s.log.ErrorContext(ctx, "audit write of a failed revocation failed", "credential", c.ID, "task_id", c.TaskID, "err", err)
	}
}
