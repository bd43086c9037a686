package broker

import (
	"context"
	"errors"
	"sync"
)

// RefusedReason is the end reason of a task, declared or delegated, whose
// grant was refused after it was recorded because its audit event could
// not be written: the trail then explains a task that has no task.granted
// (or task.delegated) event.
const RefusedReason = "grant refused: it could not be audited; no credential was handed out"

// refusedTasks are tasks recorded for a declaration that was then refused,
// whose end the ledger did not take yet. The reaper (package reconcile)
// ends them through EndRefused on its next pass, before their deadline. Safe for concurrent use.
type refusedTasks struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (r *refusedTasks) add(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = map[string]bool{}
	}
	r.ids[id] = true
}

func (r *refusedTasks) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.ids))
	for id := range r.ids {
		out = append(out, id)
	}
	return out
}

func (r *refusedTasks) done(id string) { r.mu.Lock(); delete(r.ids, id); r.mu.Unlock() }

// RefuseUnaudited undoes a grant (declared, delegated or renewed) that
// could not be audited: the task is ended in the ledger (its JWTs denied)
// and its other credentials revoked at their source before returning. If
// the ledger cannot take the end now (the audit log and Redis often fail
// together), the credentials are still revoked at their source and the
// task is kept for the reaper, which ends it, with the same reason, as
// soon as the ledger answers. None of its credentials ever left Valet.
func (s *Service) RefuseUnaudited(ctx context.Context, task Task, creds []Credential, cause error) {
	ctx = context.WithoutCancel(ctx)
	s.log.ErrorContext(ctx, "audit write failed; ending the task it would have granted", "task_id", task.ID, "err", cause)
	_, _, err := s.End(ctx, task.ID, StateRevoked, RefusedReason, "valet")
	if err == nil || errors.Is(err, ErrNotActive) || errors.Is(err, ErrRevocationPending) || ErrorCode(err) == CodeNotFound {
		return
	}
	s.revokeAtSource(ctx, creds, RefusedReason)
	s.refused.add(task.ID)
	s.log.ErrorContext(ctx, "the refused task could not be ended in the ledger yet; the reaper ends it as soon as the ledger answers",
		"task_id", task.ID, "err", err)
}

// EndRefused ends the refused tasks the ledger could not take before
// (RefuseUnaudited) and reports how many it ended. The reaper calls it on
// every pass.
func (s *Service) EndRefused(ctx context.Context) (int, error) {
	n := 0
	for _, id := range s.refused.list() {
		_, _, err := s.End(ctx, id, StateRevoked, RefusedReason, "reaper")
		switch {
		case err == nil, errors.Is(err, ErrRevocationPending):
			n++
		case errors.Is(err, ErrNotActive), ErrorCode(err) == CodeNotFound:
		default:
			return n, err
		}
		s.refused.done(id)
	}
	return n, nil
}
