package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/valet-dev/valet/broker"
)

// reapBatch is how many due tasks one ledger call ends.
const reapBatch = 256

// ReaperCore is the Service as the reaper needs it: it revokes at the
// source and ends the tasks whose grant was refused but that the ledger
// could not end then. *broker.Service implements it.
type ReaperCore interface {
	Revoker
	EndRefused(ctx context.Context) (int, error)
}

// ReaperConfig holds a Reaper's dependencies. Core, Ledger and Auditor are
// required.
type ReaperConfig struct {
	Core    ReaperCore
	Ledger  broker.DueEnder
	Auditor broker.Auditor
	// Lag, when set, observes each reaped task's lag: from its deadline to
	// its end.
	Lag    func(time.Duration)
	Now    func() time.Time
	Logger *slog.Logger
}

// Reaper ends tasks past their deadline (rule 3): their JWTs are denied
// in the same ledger step, their other credentials are revoked at their
// source, and each batch is audited as task.expired. It is safe for
// concurrent use, and several brokers may reap one ledger.
type Reaper struct {
	core  ReaperCore
	led   broker.DueEnder
	audit broker.Auditor
	lag   func(time.Duration)
	now   func() time.Time
	log   *slog.Logger
}

// NewReaper checks cfg and builds a Reaper.
func NewReaper(cfg ReaperConfig) (*Reaper, error) {
	if cfg.Core == nil || cfg.Ledger == nil || cfg.Auditor == nil {
		return nil, errors.New("reconcile: the reaper's core, ledger and auditor cannot be nil")
	}
	r := &Reaper{core: cfg.Core, led: cfg.Ledger, audit: cfg.Auditor, lag: cfg.Lag}
	r.log, r.now = orDefault(cfg.Logger, cfg.Now)
	return r, nil
}

// Once ends every active task whose deadline has passed, in batches, and
// the refused tasks the ledger could not end before, and reports how many
// it ended. The ledger lets exactly one of several reapers end each task.
func (r *Reaper) Once(ctx context.Context) (int, error) {
	ended, err := r.core.EndRefused(ctx)
	if err != nil {
		return ended, err
	}
	n, err := r.batches(ctx)
	return ended + n, err
}

// Run calls Once every interval until ctx ends. Each batch logs what it
// ended.
func (r *Reaper) Run(ctx context.Context, interval time.Duration) {
	run(ctx, interval, r.log, "reaper", r.Once)
}

// batches ends due tasks through the ledger's DueEnder: one script per
// batch of up to reapBatch tasks, then one audit record per batch.
// Replicas share the work: each batch is taken off the deadlines
// atomically, so no task is ended twice.
func (r *Reaper) batches(ctx context.Context) (int, error) {
	total := 0
	r.auditOrphans(ctx)
	for {
		now := r.now()
		lctx, cancel := broker.LedgerCtx(ctx)
		batch, err := r.led.EndDue(lctx, now, reapBatch, "deadline passed")
		cancel()
		if len(batch) > 0 {
			r.reaped(ctx, batch, now)
			total += len(batch)
		}
		if err != nil {
			return total, fmt.Errorf("ending due tasks: %w", err)
		}
		if len(batch) == 0 {
			return total, nil
		}
	}
}

// reaped revokes a batch's non-JWT credentials at their source, observes
// its lag and writes its one audit record: type task.expired, the task ids
// in detail.tasks (and task_id itself for a batch of one), every
// credential id in credentials.
func (r *Reaper) reaped(ctx context.Context, batch []broker.EndedTask, now time.Time) {
	var creds []broker.Credential
	ids := make([]string, len(batch))
	var credIDs []string
	var worst time.Duration
	for i, e := range batch {
		ids[i] = e.Task.ID
		creds = append(creds, e.Creds...)
		for _, c := range e.Creds {
			credIDs = append(credIDs, c.ID)
		}
		lag := now.Sub(e.Task.Deadline)
		worst = max(worst, lag)
		if r.lag != nil {
			r.lag(lag)
		}
	}
	r.core.RevokeAtSource(ctx, creds, "deadline passed")
	ev := broker.Event{Time: now.UTC(), Type: "task.expired", Actor: "reaper", Reason: "deadline passed",
		Detail: map[string]any{"max_lag_ms": worst.Milliseconds()}}
	if len(batch) == 1 {
		ev.TaskID, ev.Template, ev.Issuer = batch[0].Task.ID, batch[0].Task.Template, batch[0].Task.Issuer
	}
	if err := r.recordReaped(ctx, ev, ids, credIDs); err != nil {
		// The credentials are dead already; losing the record of their
		// death must not bring them back. The batch stays unacknowledged:
		// a reaper writes its record once its lease expires.
		r.log.ErrorContext(ctx, "audit write of reaped tasks failed", "tasks", ids, "err", err)
	} else if batch[0].Batch != "" {
		lctx, cancel := broker.LedgerCtx(ctx)
		if err := r.led.AckReaped(lctx, batch[0].Batch); err != nil {
			r.log.WarnContext(ctx, "acknowledging a reaped batch failed; its record may be written twice", "batch", batch[0].Batch, "err", err)
		}
		cancel()
	}
	r.log.InfoContext(ctx, "reaper ended expired tasks", "count", len(ids), "max_lag_ms", worst.Milliseconds())
}

// auditOrphans writes the audit record of batches another reaper ended but
// did not acknowledge within the lease (it died between the two).
func (r *Reaper) auditOrphans(ctx context.Context) {
	lctx, cancel := broker.LedgerCtx(ctx)
	orphans, err := r.led.Unaudited(lctx, r.now())
	cancel()
	if err != nil {
		r.log.WarnContext(ctx, "listing unaudited reaped batches failed", "err", err)
		return
	}
	for _, b := range orphans {
		ev := broker.Event{Time: r.now().UTC(), Type: "task.expired", Actor: "reaper",
			Reason: "deadline passed; recorded by another replica after the one that ended these tasks stopped",
			Detail: map[string]any{"ended_at": b.EndedAt}}
		if len(b.Tasks) == 1 {
			ev.TaskID = b.Tasks[0]
		}
		if err := r.recordReaped(ctx, ev, b.Tasks, b.Credentials); err != nil {
			r.log.ErrorContext(ctx, "audit write of an orphaned reaped batch failed", "batch", b.ID, "err", err)
			continue
		}
		lctx, cancel := broker.LedgerCtx(ctx)
		if err := r.led.AckReaped(lctx, b.ID); err != nil {
			r.log.WarnContext(ctx, "acknowledging a reaped batch failed", "batch", b.ID, "err", err)
		}
		cancel()
	}
}

// recordReaped audits a reaped batch as few records as the audit's list
// bound allows: each carries at most broker.MaxAuditList task ids (detail.tasks)
// and credential ids, so the trail never cuts a batch's evidence short.
// Each record's detail holds count (its own tasks) and batch_records.
func (r *Reaper) recordReaped(ctx context.Context, ev broker.Event, tasks, creds []string) error {
	n := max((len(tasks)+broker.MaxAuditList-1)/broker.MaxAuditList, (len(creds)+broker.MaxAuditList-1)/broker.MaxAuditList, 1)
	for i := range n {
		part := ev
		part.Detail = make(map[string]any, len(ev.Detail)+3)
		for k, v := range ev.Detail {
			part.Detail[k] = v
		}
		ts := chunk(tasks, i)
		part.Detail["tasks"], part.Detail["count"], part.Detail["batch_records"] = ts, len(ts), n
		part.Creds = chunk(creds, i)
		if err := r.audit.Record(ctx, part); err != nil {
			return err
		}
	}
	return nil
}

// chunk is the i-th slice of broker.MaxAuditList items of xs (empty past its end).
func chunk(xs []string, i int) []string {
	lo, hi := i*broker.MaxAuditList, (i+1)*broker.MaxAuditList
	if lo >= len(xs) {
		return []string{}
	}
	return xs[lo:min(hi, len(xs))]
}
