// Package stepup owns sensitive actions: the calls of a template's
// sensitive tools that need a policy check or a human approval at request
// time, the one-shot action tokens Valet issues for them, and their
// consumption by tool servers.
package stepup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/throttle"
	"github.com/valet-dev/valet/policy"
)

// Core is what stepup needs of the domain core (broker.Service): the
// templates in force, the gate and the audit event of a task, and the
// budgets. Implementations must be safe for concurrent use; their errors
// are *broker.Error values, returned to the caller as they are.
type Core interface {
	// Templates returns the template set in use.
	Templates() *policy.Set
	// LiveTask passes the gate for a task token's claims and returns its
	// task.
	LiveTask(ctx context.Context, c broker.TaskClaims) (broker.Task, error)
	// GateRecordedTask passes the gate for a task known by id.
	GateRecordedTask(ctx context.Context, id string) (broker.Task, error)
	// CheckBoundProof checks the DPoP proof of a request made with a bound
	// task token.
	CheckBoundProof(ctx context.Context, c broker.TaskClaims, proof, method, url, raw string) error
	// Spend counts one use of a budget of a task tree.
	Spend(ctx context.Context, budget, root string, limit int, until time.Time) error
	// TaskEvent is the audit event of type typ about task t by actor.
	TaskEvent(ctx context.Context, typ, actor string, t broker.Task) broker.Event
}

// Config holds a Service's dependencies. Core, Tokens and Auditor are
// required. Without Records, Limiter or Actions, the requests that need
// them answer 503, naming what is missing.
type Config struct {
	Core Core
	// Tokens verifies the task tokens agents call with.
	Tokens broker.TaskTokens
	// Actions mints and verifies action tokens.
	Actions ActionTokens
	// Records keeps action tokens and approvals.
	Records broker.Records
	// Limiter keeps the one-time use of each action token.
	Limiter broker.Limiter
	Auditor broker.Auditor
	// ActionTTL is the life of an action token: at most (and by default)
	// MaxActionTTL, never beyond its task's deadline.
	ActionTTL time.Duration
	// Resources are the ops-defined resource labels, by resource id, that
	// sensitive-tool conditions see as resource.*.
	Resources map[string]map[string]string
	// Approvals configures the approval rule.
	Approvals ApprovalConfig
	Now       func() time.Time
	Logger    *slog.Logger
}

// Service decides, issues and consumes sensitive actions. It is safe for
// concurrent use.
type Service struct {
	core      Core
	tokens    broker.TaskTokens
	actions   ActionTokens
	records   broker.Records
	limiter   broker.Limiter
	audit     broker.Auditor
	actionTTL time.Duration
	resources map[string]map[string]string
	approvals ApprovalConfig
	throttle  *throttle.Throttle // failed approver-secret attempts
	now       func() time.Time
	log       *slog.Logger
}

// New checks cfg and builds a Service.
func New(cfg Config) (*Service, error) {
	var missing []string
	if cfg.Core == nil {
		missing = append(missing, "core")
	}
	if cfg.Tokens == nil {
		missing = append(missing, "task token verifier")
	}
	if cfg.Auditor == nil {
		missing = append(missing, "auditor")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("stepup: %s cannot be nil", strings.Join(missing, ", "))
	}
	s := &Service{
		core: cfg.Core, tokens: cfg.Tokens, actions: cfg.Actions, records: cfg.Records, limiter: cfg.Limiter,
		audit: cfg.Auditor, actionTTL: cfg.ActionTTL, resources: cfg.Resources, now: cfg.Now, log: cfg.Logger,
	}
	if s.actionTTL <= 0 || s.actionTTL > MaxActionTTL {
		s.actionTTL = MaxActionTTL
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	var err error
	if s.approvals, err = approvalSettings(cfg.Approvals); err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(cfg.Approvals.Clients))
	for _, c := range cfg.Approvals.Clients {
		ids = append(ids, "approver:"+c.ID)
	}
	s.throttle = throttle.New(ids)
	return s, nil
}

// errNoLimiter is the cause of a 503 when a one-time use needs a Limiter
// and none is configured.
var errNoLimiter = errors.New("no limiter configured for one-time uses and budgets")

func (s *Service) actionTokens() (ActionTokens, error) {
	if s.actions == nil {
		return nil, broker.Unavailable("the action token issuer", errors.New("the task-token issuer cannot mint action tokens"))
	}
	return s.actions, nil
}

func (s *Service) recordsStore() (broker.Records, error) {
	if s.records == nil {
		return nil, broker.Unavailable("the record store", errors.New("no record store configured"))
	}
	return s.records, nil
}

// taskCaller checks a request made with a task token for task id: the
// token verifies, names task id (else 404), is live, its task is active,
// and a bound token comes with a valid DPoP proof by its key.
func (s *Service) taskCaller(ctx context.Context, raw, id, proof, method, url string) (broker.TaskClaims, broker.Task, error) {
	if raw == "" {
		return broker.TaskClaims{}, broker.Task{}, broker.Unauthenticated(errors.New("no task token"))
	}
	c, err := s.tokens.Verify(raw)
	if err != nil {
		s.log.WarnContext(ctx, "task token rejected", "token_sha256", broker.TokenHash(raw), "reason", err.Error())
		return broker.TaskClaims{}, broker.Task{}, broker.Unauthenticated(err)
	}
	if c.TaskID != id {
		return broker.TaskClaims{}, broker.Task{}, broker.Errorf(broker.CodeNotFound, "task %q not found", id)
	}
	t, err := s.core.LiveTask(ctx, c)
	if err != nil {
		return broker.TaskClaims{}, broker.Task{}, err
	}
	if err := s.core.CheckBoundProof(ctx, c, proof, method, url, raw); err != nil {
		return broker.TaskClaims{}, broker.Task{}, err
	}
	return c, t, nil
}
