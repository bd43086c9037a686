package broker

import (
	"context"
	"errors"
	"time"
)

// AgentConfig configures the agent controls of a Service. Every field is
// optional.
type AgentConfig struct {
	// Limiter keeps one-time uses (DPoP proof jtis, action tokens) and
	// budget counters. Nil means the Ledger, if it implements Limiter.
	// Without one, DPoP, action tokens and budgets refuse with 503.
	Limiter Limiter
	// Records keeps action tokens, approvals and tool-call events. Nil
	// means the Ledger, if it implements Records; without one, action
	// tokens, approvals and events refuse with 503.
	Records Records
	// Actions mints and verifies action tokens. Nil means the task-token
	// issuer, if it implements ActionTokens.
	Actions ActionTokens
	// ActionTTL is the life of an action token: at most (and by default)
	// MaxActionTTL, never beyond its task's deadline.
	ActionTTL time.Duration
	// Resources are the ops-defined resource labels, by resource id, that
	// sensitive-tool conditions see as resource.*.
	Resources map[string]map[string]string
	// Approvals configures the approval rule.
	Approvals ApprovalConfig
}

// agentControls is the Service's share of AgentConfig, checked once.
type agentControls struct {
	limiter   Limiter
	records   Records
	actions   ActionTokens
	actionTTL time.Duration
	resources map[string]map[string]string
	approvals ApprovalConfig
}

func (a *agentControls) init(cfg AgentConfig, ledger Ledger) error {
	a.limiter = cfg.Limiter
	if a.limiter == nil {
		a.limiter, _ = ledger.(Limiter)
	}
	a.records = cfg.Records
	if a.records == nil {
		a.records, _ = ledger.(Records)
	}
	a.actions = cfg.Actions
	a.actionTTL = cfg.ActionTTL
	if a.actionTTL <= 0 || a.actionTTL > MaxActionTTL {
		a.actionTTL = MaxActionTTL
	}
	a.resources = cfg.Resources
	return a.initApprovals(cfg.Approvals)
}

// errNoLimiter is the cause of a 503 when a control needs a Limiter and
// none is configured.
var errNoLimiter = errors.New("no limiter configured for one-time uses and budgets")

// CheckBoundProof is the DPoP check of a request made with task token raw:
// a token without cnf.jkt needs nothing; a bound one needs a valid proof by
// its key for this method and URL (see dpop.go).
func (s *Service) CheckBoundProof(ctx context.Context, c TaskClaims, proof, method, url, raw string) error {
	if c.JKT == "" {
		return nil
	}
	return s.CheckProof(ctx, proof, method, url, raw, c.JKT)
}
