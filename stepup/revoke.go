package stepup

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/requestid"
)

// RevokerConfig holds a Revoker's dependencies. Auditor is required;
// without Actions no token is an action token, without Limiter revoking
// one answers 503.
type RevokerConfig struct {
	Actions ActionTokens
	Limiter broker.Limiter
	Auditor broker.Auditor
	Now     func() time.Time
	Logger  *slog.Logger
}

// Revoker burns action tokens for RFC 7009 revocation: it is the
// broker.ActionRevoker of the core's RevokeToken. It needs nothing of the
// core, so the assembly builds it before the Service. Safe for concurrent
// use.
type Revoker struct {
	actions ActionTokens
	limiter broker.Limiter
	audit   broker.Auditor
	now     func() time.Time
	log     *slog.Logger
}

var _ broker.ActionRevoker = (*Revoker)(nil)

// NewRevoker checks cfg and builds a Revoker.
func NewRevoker(cfg RevokerConfig) (*Revoker, error) {
	if cfg.Auditor == nil {
		return nil, errors.New("stepup: auditor cannot be nil")
	}
	r := &Revoker{actions: cfg.Actions, limiter: cfg.Limiter, audit: cfg.Auditor, now: cfg.Now, log: cfg.Logger}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r, nil
}

// RevokeAction burns an action token Valet issued, so it can never be
// consumed. It reports whether raw is one. Burning an already consumed or
// burnt token succeeds: either way it can no longer be used.
func (r *Revoker) RevokeAction(ctx context.Context, raw, actor string) (bool, error) {
	if r.actions == nil {
		return false, nil // no action tokens: raw cannot be one
	}
	ac, err := r.actions.VerifyAction(raw)
	if err != nil {
		return false, nil
	}
	if r.limiter == nil {
		return true, broker.Unavailable("the replay store", errNoLimiter)
	}
	lctx, cancel := broker.LedgerCtx(ctx)
	first, err := r.limiter.Once(lctx, "action:"+ac.ID, ac.ExpiresAt.Add(time.Second))
	cancel()
	if err != nil {
		return true, broker.Unavailable("the replay store", err)
	}
	ev := broker.Event{Time: r.now().UTC(), Type: "action.revoked", RequestID: requestid.From(ctx), Actor: actor, TaskID: ac.TaskID}
	ev.Outcome, ev.Creds = "revoked", []string{ac.ID}
	ev.Detail = map[string]any{"tool": ac.Tool, "args_hash": ac.ArgsHash, "already_used": !first}
	if err := r.audit.Record(ctx, ev); err != nil {
		// The token is burnt; a retry answers success and audits again.
		return true, broker.Unavailable("the audit log", errors.Join(errors.New("action token burnt, not audited"), err))
	}
	r.log.InfoContext(ctx, "action token revoked", "jti", ac.ID, "task_id", ac.TaskID, "already_used", !first, "actor", actor)
	return true, nil
}
