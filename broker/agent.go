package broker

import (
	"context"
	"errors"
)

// AgentConfig configures the agent controls of a Service. Every field is
// optional.
type AgentConfig struct {
	// Limiter keeps one-time uses (DPoP proof jtis, action tokens) and
	// budget counters. Nil means the Ledger, if it implements Limiter.
	// Without one, DPoP, action tokens and budgets refuse with 503.
	Limiter Limiter
}

// agentControls is the Service's share of AgentConfig, checked once.
type agentControls struct {
	limiter Limiter
}

func (a *agentControls) init(cfg AgentConfig, ledger Ledger) error {
	a.limiter = cfg.Limiter
	if a.limiter == nil {
		a.limiter, _ = ledger.(Limiter)
	}
	return nil
}

// errNoLimiter is the cause of a 503 when a control needs a Limiter and
// none is configured.
var errNoLimiter = errors.New("no limiter configured for one-time uses and budgets")

// checkBoundProof is the DPoP check of a request made with task token raw:
// a token without cnf.jkt needs nothing; a bound one needs a valid proof by
// its key for this method and URL (see dpop.go).
func (s *Service) checkBoundProof(ctx context.Context, c TaskClaims, proof, method, url, raw string) error {
	if c.JKT == "" {
		return nil
	}
	return s.checkProof(ctx, proof, method, url, raw, c.JKT)
}
