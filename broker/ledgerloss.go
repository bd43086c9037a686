package broker

import (
	"context"
	"errors"
	"fmt"
)

// LossReporter is a ledger that can tell it lost its data (the Redis
// ledger's generation marker); Config.Loss. LossWarning says, for /readyz
// and operators, when and what followed, or "" if no loss was seen. It must
// be safe for concurrent use.
type LossReporter interface {
	LossWarning() string
}

// denyUnrecorded revokes a token that verifies with Valet's keys but whose
// task the ledger has no record of. Records outlive every token they
// cover, so that only happens when the ledger lost its data: the token may
// still be live at a verifier, and a 200 that recorded nothing would lie
// (rule 5). It goes on the deny list and the feed until it expires; if
// that cannot be written, the revocation fails with 503.
func (s *Service) denyUnrecorded(ctx context.Context, c TaskClaims, actor string) error {
	if !s.now().Before(c.ExpiresAt) {
		return nil // expired: nothing left to revoke
	}
	if s.epochs == nil {
		return Unavailable("the credential ledger", errors.New("the token's task is not on record and this ledger cannot deny unknown tokens"))
	}
	lctx, cancel := LedgerCtx(ctx)
	err := s.epochs.Deny(lctx, c.ID, c.TaskID, c.ExpiresAt)
	cancel()
	if err != nil {
		return Unavailable("the credential ledger", fmt.Errorf("denying unrecorded token %s: %w", c.ID, err))
	}
	s.log.WarnContext(ctx, "revoked a token the ledger has no record of (its records were lost); it is denied until it expires",
		"jti", c.ID, "task_id", c.TaskID, "by", actor)
	ev := s.TaskEvent(ctx, "credential.revoked", actor, Task{ID: c.TaskID, Template: c.Template, Issuer: c.AgentIssuer})
	ev.Reason, ev.Creds = "revoked by "+actor+"; its task was not on record", []string{c.ID}
	if err := s.audit.Record(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "audit write of a revocation failed", "jti", c.ID, "err", err)
	}
	return nil
}
