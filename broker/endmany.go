package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// EndMany ends a batch of at most MaxEndMany tasks (bulk revocation): one
// ledger call for the whole batch (ManyEnder), each ended task's
// credentials with a source revoked there (a failure is queued for retry
// and counted in its EndResult.Failed), one audit record per MaxAuditList
// tasks naming them all (type task.<state>, detail.tasks), one log line,
// then the descendants of every task that has children, as End does. It
// answers one EndResult per id, in order.
//
// An error before the ledger answered means nothing is known to have
// ended (Unavailable); an error ending descendants comes with the results.
// As with End, a failed audit write is logged, never undone: the
// credentials are dead already.
func (s *Service) EndMany(ctx context.Context, ids []string, state State, reason, actor string) ([]EndResult, error) {
	lctx, cancel := LedgerCtx(ctx)
	res, err := s.ledger.EndMany(lctx, ids, state, reason, s.now())
	cancel()
	if err != nil {
		return nil, Unavailable("the credential ledger", fmt.Errorf("ending %d tasks: %w", len(ids), err))
	}
	var ended, credIDs []string
	for i := range res {
		r := &res[i]
		if r.Outcome != EndedNow {
			continue
		}
		ended = append(ended, r.Task.ID)
		for _, c := range r.Creds {
			credIDs = append(credIDs, c.ID)
		}
		r.Failed = s.revokeAtSource(ctx, r.Creds, reason)
	}
	if len(ended) > 0 {
		ev := s.TaskEvent(ctx, "task."+string(state), actor, Task{})
		ev.Reason = reason
		if err := s.recordBatch(ctx, ev, ended, credIDs); err != nil {
			s.log.ErrorContext(ctx, "audit write of ended tasks failed", "count", len(ended), "err", err)
		}
		s.log.InfoContext(ctx, "tasks ended", "count", len(ended), "credentials", len(credIDs), "state", state, "reason", reason)
	}
	var first error
	for _, r := range res {
		if r.Outcome == EndedNotFound || len(r.Children) == 0 {
			continue
		}
		if err := s.endDescendants(ctx, r.Task); err != nil && first == nil {
			first = err
		}
	}
	return res, first
}

// recordBatch audits the end of many tasks in as few records as the
// audit's list bound allows: each carries at most MaxAuditList task ids
// (detail.tasks; a timeline of each shows it) and credential ids, so the
// trail never cuts the evidence short. Each record's detail holds count
// (its own tasks) and batch_records; a record of one task also names it in
// task_id.
func (s *Service) recordBatch(ctx context.Context, ev Event, tasks, creds []string) error {
	chunk := func(xs []string, i int) []string {
		lo, hi := i*MaxAuditList, (i+1)*MaxAuditList
		if lo >= len(xs) {
			return []string{}
		}
		return xs[lo:min(hi, len(xs))]
	}
	n := max((len(tasks)+MaxAuditList-1)/MaxAuditList, (len(creds)+MaxAuditList-1)/MaxAuditList, 1)
	// The records are written at once, so that a file audit's group
	// commit covers them with one fsync rather than one each.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		part := ev
		ts := chunk(tasks, i)
		part.Detail = map[string]any{"tasks": ts, "count": len(ts), "batch_records": n, "batch_record": i + 1}
		part.Creds = chunk(creds, i)
		if len(tasks) == 1 {
			part.TaskID = tasks[0]
		}
		wg.Go(func() { errs[i] = s.audit.Record(ctx, part) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
