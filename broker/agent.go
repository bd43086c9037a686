package broker

import (
	"context"
	"errors"
)

// AgentConfig configures the agent controls of a Service. Every field is
// optional.
type AgentConfig struct {
	// Limiter keeps one-time uses (DPoP proof jtis) and budget counters.
	// Without one, DPoP and budgets refuse with 503.
	Limiter Limiter
}

// agentControls is the Service's share of AgentConfig, checked once.
type agentControls struct {
	limiter Limiter
}

func (a *agentControls) init(cfg AgentConfig) {
	a.limiter = cfg.Limiter
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
