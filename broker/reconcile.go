package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// defaultReconcileGrace spares credentials younger than this: a declaration
// may have minted them and not yet written the ledger.
const defaultReconcileGrace = time.Minute

// SourceInventory is implemented by issuers that can list what they made
// that is still live at their source, so the reconciler can find
// credentials the ledger does not know (the broker died between minting
// and recording, or Redis lost the record). Implementations must be safe
// for concurrent use; errors wrap ErrUnavailable when the source is down.
type SourceInventory interface {
	// Live lists the credentials live at the source that carry a Valet
	// task id, with ID, Kind, TaskID, IssuedAt and ExpiresAt set.
	Live(ctx context.Context) ([]Credential, error)
}

// ReconcileOnce revokes every credential live at a source that the ledger
// does not account for: its task is unknown, has ended, or does not list
// it. Credentials younger than the reconcile grace are left alone. It
// reports how many it revoked; a ledger or source that cannot be read stops
// the pass with an error and revokes nothing on a guess.
func (s *Service) ReconcileOnce(ctx context.Context) (int, error) {
	revoked := 0
	for _, is := range s.extra {
		inv, ok := is.(SourceInventory)
		if !ok {
			continue
		}
		live, err := inv.Live(ctx)
		if err != nil {
			return revoked, fmt.Errorf("listing live %s credentials: %w", is.Kind(), err)
		}
		for _, c := range live {
			if s.now().Sub(c.IssuedAt) < s.reconGrace {
				continue
			}
			why, err := s.unaccounted(ctx, c)
			if err != nil {
				return revoked, err
			}
			if why == "" {
				continue
			}
			rctx, cancel := context.WithTimeout(ctx, defaultMintTimeout)
			err = is.Revoke(rctx, c)
			cancel()
			if err != nil {
				s.counters.failed.Add(1)
				s.log.ErrorContext(ctx, "revoking an orphan credential failed", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID, "why", why, "err", err)
				s.queueRevocation(ctx, c, 1, err)
				continue
			}
			revoked++
			s.counters.reconciled.Add(1)
			s.log.WarnContext(ctx, "orphan credential revoked by the reconciler", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID, "why", why)
		}
	}
	return revoked, nil
}

// unaccounted says why the ledger does not vouch for c, or "" if it does.
func (s *Service) unaccounted(ctx context.Context, c Credential) (string, error) {
	lctx, cancel := LedgerCtx(ctx)
	t, creds, err := s.ledger.Task(lctx, c.TaskID)
	cancel()
	switch {
	case errors.Is(err, ErrNotFound):
		return "task unknown to the ledger", nil
	case err != nil:
		return "", fmt.Errorf("reading task %s: %w", c.TaskID, err)
	case t.State.Final():
		return "task " + string(t.State), nil
	case !slices.ContainsFunc(creds, func(r Credential) bool { return r.ID == c.ID }):
		return "credential not recorded under its task", nil
	}
	return "", nil
}

// RunReconciler calls ReconcileOnce every interval until ctx ends.
func (s *Service) RunReconciler(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if n, err := s.ReconcileOnce(ctx); err != nil {
			s.log.ErrorContext(ctx, "reconciler pass failed", "revoked", n, "err", err)
		} else if n > 0 {
			s.log.WarnContext(ctx, "reconciler revoked orphan credentials", "revoked", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
