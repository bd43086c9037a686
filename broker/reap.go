package broker

import (
	"context"
	"fmt"
	"time"
)

// reapBatches ends due tasks through the ledger's DueEnder: one script per
// batch of up to reapBatch tasks, then one audit record per batch.
// Replicas share the work: each batch is taken off the deadlines
// atomically, so no task is ended twice.
func (s *Service) reapBatches(ctx context.Context) (int, error) {
	total := 0
	s.auditOrphans(ctx)
	for {
		now := s.now()
		lctx, cancel := LedgerCtx(ctx)
		batch, err := s.ledger.EndDue(lctx, now, reapBatch, "deadline passed")
		cancel()
		if len(batch) > 0 {
			s.reaped(ctx, batch, now)
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
func (s *Service) reaped(ctx context.Context, batch []EndedTask, now time.Time) {
	var creds []Credential
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
		if s.reaperLag != nil {
			s.reaperLag(lag)
		}
	}
	s.revokeAtSource(ctx, creds, "deadline passed")
	ev := Event{Time: now.UTC(), Type: "task.expired", Actor: "reaper", Reason: "deadline passed",
		Detail: map[string]any{"max_lag_ms": worst.Milliseconds()}}
	if len(batch) == 1 {
		ev.TaskID, ev.Template, ev.Issuer = batch[0].Task.ID, batch[0].Task.Template, batch[0].Task.Issuer
	}
	if err := s.recordReaped(ctx, ev, ids, credIDs); err != nil {
		// The credentials are dead already; losing the record of their
		// death must not bring them back. The batch stays unacknowledged:
		// a reaper writes its record once its lease expires.
		s.log.ErrorContext(ctx, "audit write of reaped tasks failed", "tasks", ids, "err", err)
	} else if batch[0].Batch != "" {
		lctx, cancel := LedgerCtx(ctx)
		if err := s.ledger.AckReaped(lctx, batch[0].Batch); err != nil {
			s.log.WarnContext(ctx, "acknowledging a reaped batch failed; its record may be written twice", "batch", batch[0].Batch, "err", err)
		}
		cancel()
	}
	s.log.InfoContext(ctx, "reaper ended expired tasks", "count", len(ids), "max_lag_ms", worst.Milliseconds())
}

// auditOrphans writes the audit record of batches another reaper ended but
// did not acknowledge within the lease (it died between the two).
func (s *Service) auditOrphans(ctx context.Context) {
	lctx, cancel := LedgerCtx(ctx)
	orphans, err := s.ledger.Unaudited(lctx, s.now())
	cancel()
	if err != nil {
		s.log.WarnContext(ctx, "listing unaudited reaped batches failed", "err", err)
		return
	}
	for _, b := range orphans {
		ev := Event{Time: s.now().UTC(), Type: "task.expired", Actor: "reaper",
			Reason: "deadline passed; recorded by another replica after the one that ended these tasks stopped",
			Detail: map[string]any{"ended_at": b.EndedAt}}
		if len(b.Tasks) == 1 {
			ev.TaskID = b.Tasks[0]
		}
		if err := s.recordReaped(ctx, ev, b.Tasks, b.Credentials); err != nil {
			s.log.ErrorContext(ctx, "audit write of an orphaned reaped batch failed", "batch", b.ID, "err", err)
			continue
		}
		lctx, cancel := LedgerCtx(ctx)
		if err := s.ledger.AckReaped(lctx, b.ID); err != nil {
			s.log.WarnContext(ctx, "acknowledging a reaped batch failed", "batch", b.ID, "err", err)
		}
		cancel()
	}
}

// recordReaped audits a reaped batch as few records as the audit's list
// bound allows: each carries at most MaxAuditList task ids (detail.tasks)
// and credential ids, so the trail never cuts a batch's evidence short.
// Each record's detail holds count (its own tasks) and batch_records.
func (s *Service) recordReaped(ctx context.Context, ev Event, tasks, creds []string) error {
	n := max((len(tasks)+MaxAuditList-1)/MaxAuditList, (len(creds)+MaxAuditList-1)/MaxAuditList, 1)
	for i := range n {
		part := ev
		part.Detail = make(map[string]any, len(ev.Detail)+3)
		for k, v := range ev.Detail {
			part.Detail[k] = v
		}
		ts := chunk(tasks, i)
		part.Detail["tasks"], part.Detail["count"], part.Detail["batch_records"] = ts, len(ts), n
		part.Creds = chunk(creds, i)
		if err := s.audit.Record(ctx, part); err != nil {
			return err
		}
	}
	return nil
}

// chunk is the i-th slice of MaxAuditList items of xs (empty past its end).
func chunk(xs []string, i int) []string {
	lo, hi := i*MaxAuditList, (i+1)*MaxAuditList
	if lo >= len(xs) {
		return []string{}
	}
	return xs[lo:min(hi, len(xs))]
}
