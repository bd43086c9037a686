package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/valet-dev/valet/broker"
)

// DefaultGrace spares credentials younger than this: a declaration may have
// minted them and not yet written the ledger.
const DefaultGrace = time.Minute

// TaskReader reads a task and its credentials from the ledger
// (broker.Ledger implements it). Unknown ids give broker.ErrNotFound.
type TaskReader interface {
	Task(ctx context.Context, id string) (broker.Task, []broker.Credential, error)
}

// ReconcilerConfig holds a Reconciler's dependencies. Revoker and Ledger
// are required.
type ReconcilerConfig struct {
	// Sources are the issuers whose live credentials are listed: those
	// given that implement broker.SourceInventory.
	Sources []broker.Issuer
	Revoker Revoker
	Ledger  TaskReader
	// Grace spares credentials younger than it (0: DefaultGrace).
	Grace  time.Duration
	Now    func() time.Time
	Logger *slog.Logger
}

// Reconciler revokes credentials live at a source that the ledger does
// not account for (rule 2: nothing may live that Redis does not record).
// It is safe for concurrent use.
type Reconciler struct {
	sources    []broker.SourceInventory
	kinds      []broker.CredentialKind
	revoker    Revoker
	ledger     TaskReader
	grace      time.Duration
	now        func() time.Time
	log        *slog.Logger
	reconciled atomic.Uint64
}

// ReconcileStats counts what a Reconciler did since it was built.
type ReconcileStats struct {
	Reconciled uint64 // orphans revoked
}

// NewReconciler checks cfg and builds a Reconciler.
func NewReconciler(cfg ReconcilerConfig) (*Reconciler, error) {
	if cfg.Revoker == nil || cfg.Ledger == nil {
		return nil, errors.New("reconcile: the reconciler's revoker and ledger cannot be nil")
	}
	r := &Reconciler{revoker: cfg.Revoker, ledger: cfg.Ledger, grace: cfg.Grace}
	for _, is := range cfg.Sources {
		if inv, ok := is.(broker.SourceInventory); ok {
			r.sources, r.kinds = append(r.sources, inv), append(r.kinds, is.Kind())
		}
	}
	if r.grace <= 0 {
		r.grace = DefaultGrace
	}
	r.log, r.now = orDefault(cfg.Logger, cfg.Now)
	return r, nil
}

// Stats returns the Reconciler's counters.
func (r *Reconciler) Stats() ReconcileStats { return ReconcileStats{Reconciled: r.reconciled.Load()} }

// Once revokes every credential live at a source that the ledger does not
// account for: its task is unknown, has ended, or does not list it.
// Credentials younger than the grace are left alone. It reports how many
// it revoked; a ledger or source that cannot be read stops the pass with
// an error and revokes nothing on a guess. A revocation that fails is
// queued for retry by the Revoker.
func (r *Reconciler) Once(ctx context.Context) (int, error) {
	revoked := 0
	for i, inv := range r.sources {
		live, err := inv.Live(ctx)
		if err != nil {
			return revoked, fmt.Errorf("listing live %s credentials: %w", r.kinds[i], err)
		}
		for _, c := range live {
			if r.now().Sub(c.IssuedAt) < r.grace {
				continue
			}
			why, err := r.unaccounted(ctx, c)
			if err != nil {
				return revoked, err
			}
			if why == "" {
				continue
			}
			if r.revoker.RevokeAtSource(ctx, []broker.Credential{c}, "orphan: "+why) > 0 {
				continue // logged, audited and queued by the Revoker
			}
			revoked++
			r.reconciled.Add(1)
			r.log.WarnContext(ctx, "orphan credential revoked by the reconciler", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID, "why", why)
		}
	}
	return revoked, nil
}

// unaccounted says why the ledger does not vouch for c, or "" if it does.
func (r *Reconciler) unaccounted(ctx context.Context, c broker.Credential) (string, error) {
	lctx, cancel := broker.LedgerCtx(ctx)
	t, creds, err := r.ledger.Task(lctx, c.TaskID)
	cancel()
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return "task unknown to the ledger", nil
	case err != nil:
		return "", fmt.Errorf("reading task %s: %w", c.TaskID, err)
	case t.State.Final():
		return "task " + string(t.State), nil
	case !slices.ContainsFunc(creds, func(x broker.Credential) bool { return x.ID == c.ID }):
		return "credential not recorded under its task", nil
	}
	return "", nil
}

// Run calls Once every interval until ctx ends.
func (r *Reconciler) Run(ctx context.Context, interval time.Duration) {
	run(ctx, interval, r.log, "reconciler", r.Once)
}
