package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/valet-dev/valet/dpop"
)

// CheckProof checks a DPoP proof for a request of method to url made with
// access token raw ("" for a declaration, which is made with an identity
// token), that it is by the key with thumbprint jkt when jkt is set, and
// that its jti was never seen. It returns the proof's thumbprint. Every
// failure is the fixed 401; the reason goes to the log.
func (s *Service) CheckProof(ctx context.Context, proof, method, url, raw, jkt string) error {
	_, err := s.proofKey(ctx, proof, method, url, raw, jkt)
	return err
}

func (s *Service) proofKey(ctx context.Context, proof, method, url, raw, jkt string) (string, error) {
	now := s.now()
	p, err := dpop.Check(proof, method, url, now, raw)
	if err != nil {
		s.log.WarnContext(ctx, "DPoP proof rejected", "reason", err.Error())
		return "", &Error{Code: CodeUnauthenticated, Message: "invalid DPoP proof", Err: err}
	}
	if jkt != "" && p.JKT != jkt {
		s.log.WarnContext(ctx, "DPoP proof by the wrong key", "want_jkt", jkt, "got_jkt", p.JKT)
		return "", &Error{Code: CodeUnauthenticated, Message: "invalid DPoP proof", Err: errors.New("proof key does not match cnf.jkt")}
	}
	if s.agent.limiter == nil {
		return "", Unavailable("the replay store", errNoLimiter)
	}
	lctx, cancel := LedgerCtx(ctx)
	first, err := s.agent.limiter.Once(lctx, "dpop:"+p.JKT+":"+p.JTI, p.IssuedAt.Add(2*dpop.Window))
	cancel()
	switch {
	case err != nil:
		return "", Unavailable("the replay store", err)
	case !first:
		s.log.WarnContext(ctx, "DPoP proof replayed", "jkt", p.JKT)
		return "", &Error{Code: CodeUnauthenticated, Message: "invalid DPoP proof", Err: fmt.Errorf("proof jti %.32q was used before", p.JTI)}
	}
	return p.JKT, nil
}

// bindDeclaration checks the DPoP proof a declaration carries, if any, and
// returns the key thumbprint its task's tokens are to be bound to.
func (s *Service) bindDeclaration(ctx context.Context, d Declaration) (string, error) {
	if d.Proof == "" {
		return "", nil
	}
	return s.proofKey(ctx, d.Proof, d.Method, d.URL, "", "")
}
