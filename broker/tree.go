package broker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// maxTreeNodes bounds one cascade: more descendants than this are left to
// die by their own deadlines, which never pass their root's.
const maxTreeNodes = 100_000

// RootOf is the id of the first task of t's delegation tree.
func RootOf(t Task) string {
	if t.Root == "" {
		return t.ID
	}
	return t.Root
}

// LiveTask passes a verified task token through the gate (gate.go) and
// returns its task: on record, not denied, not covered by an epoch, its
// task active, and no incident control on its chain or template.
func (s *Service) LiveTask(ctx context.Context, c TaskClaims) (Task, error) {
	return s.GateTaskToken(ctx, c, nil)
}

// Spend counts one use of budget for the task tree of root and refuses it
// over limit (0: no cap). The counter lives until the later of the
// deadlines it is given, so it outlives every task that can spend from it.
func (s *Service) Spend(ctx context.Context, budget, root string, limit int, until time.Time) error {
	if limit <= 0 {
		return nil
	}
	if s.agent.limiter == nil {
		return Unavailable("the budget store", errNoLimiter)
	}
	lctx, cancel := LedgerCtx(ctx)
	n, err := s.agent.limiter.Count(lctx, budget+":"+root, until)
	cancel()
	if err != nil {
		return Unavailable("the budget store", err)
	}
	if n > int64(limit) {
		return &Error{Code: CodeForbidden, Message: fmt.Sprintf("budget %q of %d is spent", budget, limit), Rule: "budgets." + budget}
	}
	return nil
}

// endDescendants ends every task delegated, directly or not, from t:
// breadth first over the ledger's children sets, with a visited set so no
// id is handled twice, and at most maxTreeNodes of them. Descendants that
// already ended are still walked, so a cascade cut short by a ledger outage
// finishes when the parent is ended (or revoked) again.
func (s *Service) endDescendants(ctx context.Context, t Task) error {
	ctx = context.WithoutCancel(ctx)
	reason := fmt.Sprintf("ancestor task %s ended (%s)", t.ID, t.State)
	visited := map[string]bool{t.ID: true}
	queue := []string{t.ID}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		lctx, cancel := LedgerCtx(ctx)
		kids, err := s.ledger.Children(lctx, id)
		cancel()
		if err != nil {
			return Unavailable("the credential ledger", fmt.Errorf("listing children of task %s: %w", id, err))
		}
		for _, kid := range kids {
			if visited[kid] {
				continue
			}
			if len(visited) >= maxTreeNodes {
				s.log.ErrorContext(ctx, "delegation tree too large to end at once; the rest end by their deadlines",
					"task_id", t.ID, "limit", maxTreeNodes)
				return nil
			}
			visited[kid] = true
			queue = append(queue, kid)
			lctx, cancel := LedgerCtx(ctx)
			ct, creds, err := s.ledger.End(lctx, kid, StateRevoked, reason, s.now())
			cancel()
			switch {
			case errors.Is(err, ErrNotActive), errors.Is(err, ErrNotFound):
				continue
			case err != nil:
				return Unavailable("the credential ledger", fmt.Errorf("ending descendant %s of task %s: %w", kid, t.ID, err))
			}
			s.revokeAtSource(ctx, creds, reason)
			ev := s.TaskEvent(ctx, "task.revoked", "valet", ct)
			ev.Reason = reason
			for _, c := range creds {
				ev.Creds = append(ev.Creds, c.ID)
			}
			if err := s.audit.Record(ctx, ev); err != nil {
				s.log.ErrorContext(ctx, "audit write of a task end failed", "task_id", kid, "err", err)
			}
		}
	}
	return nil
}
