// Package toolevents keeps what tool servers report that agents did
// (tool-call events, audited as tool.called) and rolls a task back by
// calling the undo webhooks those reports named.
package toolevents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/valet-dev/valet/broker"
)

// DefaultEventRetention is how long events stay after their task's
// deadline when Config.Retention is zero: the Redis ledger's default
// retention of task records.
const DefaultEventRetention = time.Hour

// TaskTokens verifies Valet's task tokens (broker.TaskTokens does).
type TaskTokens interface {
	Verify(raw string) (broker.TaskClaims, error)
}

// LateVerifier is implemented by a task-token issuer that can verify a
// token whose exp passed at most grace ago (signature, type, issuer and
// claims checked as by Verify). It is used only to accept late tool-call
// reports, never to grant anything.
type LateVerifier interface {
	VerifyExpired(raw string, grace time.Duration) (broker.TaskClaims, error)
}

// Core is what tool-call events need of the domain core (broker.Service):
// the gate, the DPoP check and audit events. Implementations must be safe
// for concurrent use.
type Core interface {
	// GateTaskToken is the gate for a verified task token that reports or
	// reads: its task read from the ledger must still stand (the fixed 401
	// otherwise).
	GateTaskToken(ctx context.Context, c broker.TaskClaims) (broker.Task, error)
	// CheckProof checks a DPoP proof by the key jkt for this request.
	CheckProof(ctx context.Context, proof, method, url, raw, jkt string) error
	// TaskEvent starts the audit event of type typ by actor about task t.
	TaskEvent(ctx context.Context, typ, actor string, t broker.Task) broker.Event
}

// Clients authenticates a tool server's client credentials and names it
// ("client:<id>"); clientauth.Authorizer does. Implementations must be
// safe for concurrent use.
type Clients interface {
	Authorize(ctx context.Context, clientID, secret, bearer string) (string, error)
}

// Config wires tool-call events and rollback.
type Config struct {
	Core    Core
	Clients Clients
	Tokens  TaskTokens
	Ledger  broker.Ledger
	Auditor broker.Auditor
	// Records keeps the events and the rollback steps run; nil refuses
	// every report, listing and rollback with 503.
	Records broker.Records
	// Late, when set, verifies task tokens expired within Retention, so a
	// tool server's client may report late.
	Late LateVerifier
	// ClientIDs are the tool-server clients configured now: a rollback step
	// reported by a client no longer among them counts as revoked.
	ClientIDs []string
	// Retention is how long events stay after their task's deadline, and
	// how late a report may come; default DefaultEventRetention. Set it to
	// the ledger's retention.
	Retention time.Duration
	// Rollback says which undo webhooks a rollback may call.
	Rollback RollbackConfig
	Logger   *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Service records and lists tool-call events and runs rollbacks. It is
// safe for concurrent use.
type Service struct {
	core      Core
	auth      Clients
	tokens    TaskTokens
	ledger    broker.Ledger
	audit     broker.Auditor
	records   broker.Records
	late      LateVerifier
	clients   []string
	retention time.Duration
	rollback  RollbackConfig
	log       *slog.Logger
	now       func() time.Time
}

// New checks cfg.
func New(cfg Config) (*Service, error) {
	var missing []string
	for _, m := range []struct {
		name string
		nil  bool
	}{{"core", cfg.Core == nil}, {"clients", cfg.Clients == nil}, {"tokens", cfg.Tokens == nil}, {"ledger", cfg.Ledger == nil}, {"auditor", cfg.Auditor == nil}} {
		if m.nil {
			missing = append(missing, m.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("toolevents: %s cannot be nil", strings.Join(missing, ", "))
	}
	s := &Service{core: cfg.Core, auth: cfg.Clients, tokens: cfg.Tokens, ledger: cfg.Ledger, audit: cfg.Auditor, records: cfg.Records,
		late: cfg.Late, clients: cfg.ClientIDs, retention: cfg.Retention, rollback: cfg.Rollback, log: cfg.Logger, now: cfg.Now}
	s.rollback.init()
	if s.retention <= 0 {
		s.retention = DefaultEventRetention
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// recordStore is the record store, or the 503 of its absence.
func (s *Service) recordStore() (broker.Records, error) {
	if s.records == nil {
		return nil, broker.Unavailable("the record store", errors.New("no record store configured"))
	}
	return s.records, nil
}
