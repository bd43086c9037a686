package delegation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// Core is what a token exchange needs of the domain core; *broker.Service
// implements it. Implementations must be safe for concurrent use.
type Core interface {
	// Authenticate verifies an agent's identity token: the fixed 401, or
	// 503 when its issuer cannot be reached.
	Authenticate(ctx context.Context, raw string) (broker.Principal, error)
	// LiveTask passes a verified task token through the gate and returns
	// its task.
	LiveTask(ctx context.Context, c broker.TaskClaims) (broker.Task, error)
	// CheckBoundProof checks the DPoP proof of a DPoP-bound task token.
	CheckBoundProof(ctx context.Context, c broker.TaskClaims, proof, method, url, token string) error
	// CheckLinks is the gate's incident controls for a chain that has no
	// task yet: 403 naming the control, 503 when the store is unreachable.
	CheckLinks(ctx context.Context, links []broker.Link, template string) error
	// Templates is the template set in force.
	Templates() *policy.Set
	// Spend counts one use of a tree's budget and refuses it over limit.
	Spend(ctx context.Context, budget, root string, limit int, until time.Time) error
	// TaskEvent is an audit event about a task, stamped with the request id.
	TaskEvent(ctx context.Context, typ, actor string, t broker.Task) broker.Event
	// Issue mints, records and audits a task's credentials: nothing is
	// returned unless the ledger and the audit trail both took them.
	Issue(ctx context.Context, task broker.Task, p broker.Principal, g broker.Grant, issuers []broker.Issuer, ev broker.Event) ([]broker.Minted, error)
}

// Config holds a Service's dependencies. Core, Tokens and Auditor are
// required.
type Config struct {
	// Core is the broker's Service.
	Core Core
	// Tokens verifies subject tokens and mints the child's task token: the
	// task-token issuer the Core uses.
	Tokens broker.TaskTokens
	// Auditor records refused exchanges (granted ones go through
	// Core.Issue).
	Auditor broker.Auditor
	Now     func() time.Time
	Logger  *slog.Logger
}

// Service answers token exchanges. It is safe for concurrent use.
type Service struct {
	core   Core
	tokens broker.TaskTokens
	audit  broker.Auditor
	now    func() time.Time
	log    *slog.Logger
}

// New checks cfg and builds a Service.
func New(cfg Config) (*Service, error) {
	var missing []string
	if cfg.Core == nil {
		missing = append(missing, "core")
	}
	if cfg.Tokens == nil {
		missing = append(missing, "task token issuer")
	}
	if cfg.Auditor == nil {
		missing = append(missing, "auditor")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("delegation: %s cannot be nil", strings.Join(missing, ", "))
	}
	s := &Service{core: cfg.Core, tokens: cfg.Tokens, audit: cfg.Auditor, now: cfg.Now, log: cfg.Logger}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Delegate implements token exchange: the holder of a live task token asks
// for a narrower task token for a sub-agent, who proves its identity with
// its own identity token. The child task is recorded under its parent, so
// ending the parent ends it; nothing is handed out unless the ledger and
// the audit trail both took it.
func (s *Service) Delegate(ctx context.Context, req Request) (broker.Task, []broker.Minted, error) {
	pc, parent, actor, err := s.exchangeParties(ctx, req)
	if err != nil {
		return broker.Task{}, nil, err
	}
	tmpl, err := s.admitDelegation(ctx, parent, actor)
	if err != nil {
		return broker.Task{}, nil, s.delegationDenied(ctx, parent, actor, err)
	}
	now := s.now()
	g, depth, limit, err := s.attenuateDelegation(ctx, tmpl, pc, parent, req, now)
	if err != nil {
		return broker.Task{}, nil, s.delegationDenied(ctx, parent, actor, err)
	}
	child := childTask(parent, actor, tmpl, g, depth, now)
	if child.Deadline.After(limit) { // Attenuate guarantees this; a second lock on the door.
		return broker.Task{}, nil, &broker.Error{Code: broker.CodeInternal, Message: "issuing credentials failed; nothing was issued",
			Err: fmt.Errorf("child deadline %s after parent's %s", child.Deadline, limit)}
	}
	ev := s.core.TaskEvent(ctx, "task.delegated", actor.Subject, child)
	ev.Detail = map[string]any{"parent": parent.ID, "root": child.Root, "depth": depth, "act": child.Act, "subject": child.Subject,
		"tools": child.Tools, "audiences": g.Audiences, "deadline": child.Deadline}
	minted, err := s.core.Issue(ctx, child, actor, g, []broker.Issuer{s.tokens}, ev) // a child gets a task token only
	if err != nil {
		return broker.Task{}, nil, err
	}
	s.log.InfoContext(ctx, "task delegated", "task_id", child.ID, "parent", parent.ID, "agent", child.Agent,
		"depth", depth, "tools", child.Tools, "deadline", child.Deadline, "credentials", credentialIDs(minted))
	return child, minted, nil
}

// exchangeParties checks both sides of a token exchange: the subject token
// (verified, its task live, its DPoP proof when bound) and the actor's
// identity token. It returns the subject token's claims, its task (the
// parent) and the actor.
func (s *Service) exchangeParties(ctx context.Context, req Request) (broker.TaskClaims, broker.Task, broker.Principal, error) {
	if req.SubjectToken == "" || req.ActorToken == "" {
		return broker.TaskClaims{}, broker.Task{}, broker.Principal{}, broker.Errorf(broker.CodeInvalid, "subject_token and actor_token are both required")
	}
	pc, err := s.tokens.Verify(req.SubjectToken)
	if err != nil {
		s.log.WarnContext(ctx, "subject token rejected", "token_sha256", broker.TokenHash(req.SubjectToken), "reason", err.Error())
		return broker.TaskClaims{}, broker.Task{}, broker.Principal{}, broker.Unauthenticated(fmt.Errorf("subject token: %w", err))
	}
	parent, err := s.core.LiveTask(ctx, pc)
	if err != nil {
		return broker.TaskClaims{}, broker.Task{}, broker.Principal{}, err
	}
	if err := s.core.CheckBoundProof(ctx, pc, req.Proof, req.Method, req.URL, req.SubjectToken); err != nil {
		return broker.TaskClaims{}, broker.Task{}, broker.Principal{}, err
	}
	actor, err := s.core.Authenticate(ctx, req.ActorToken)
	if err != nil {
		return broker.TaskClaims{}, broker.Task{}, broker.Principal{}, err
	}
	return pc, parent, actor, nil
}

// admitDelegation decides whether parent may delegate to actor at all: the
// child's whole chain, the sub-agent and its issuer included, passes the
// gate before anything is spent or minted for it; the parent's template
// must still exist and its delegation condition admit the actor. It
// returns that template.
func (s *Service) admitDelegation(ctx context.Context, parent broker.Task, actor broker.Principal) (*policy.Template, error) {
	childLinks := broker.Task{Chain: childChain(parent, actor), Subject: parent.Subject, SubjectIssuer: parent.SubjectIssuer}.Links()
	if err := s.core.CheckLinks(ctx, childLinks, parent.Template); err != nil {
		return nil, err
	}
	tmpl, ok := s.core.Templates().Get(parent.Template)
	if !ok {
		return nil, &broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf("template %q is no longer available", parent.Template), Rule: "template"}
	}
	if tmpl.Delegation != nil {
		if ok, cerr := tmpl.Delegation.Condition.EvalClaims(actor.Claims); !ok {
			return nil, &broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf("template %q does not allow delegation to this agent", tmpl.Name),
				Rule: "delegation.condition", Err: cerr}
		}
	}
	return tmpl, nil
}

// attenuateDelegation narrows the parent's grant (as its token carries it)
// to what req asks and tmpl allows, then spends one of the tree's
// delegations budget. It returns the child's grant, its depth, and the
// deadline it may not outlive: the parent's, or the subject token's expiry
// if sooner.
func (s *Service) attenuateDelegation(ctx context.Context, tmpl *policy.Template, pc broker.TaskClaims, parent broker.Task, req Request, now time.Time) (broker.Grant, int, time.Time, error) {
	limit := parent.Deadline
	if pc.ExpiresAt.Before(limit) {
		limit = pc.ExpiresAt
	}
	g, depth, err := Attenuate(tmpl, ParentGrant{
		Tools: pc.Tools, ActionTools: pc.ActionTools, Audiences: pc.Audience, Scopes: strings.Fields(pc.Scope), Deadline: limit, Depth: parent.Depth,
	}, req, now)
	if err != nil {
		return broker.Grant{}, 0, time.Time{}, err
	}
	if err := s.core.Spend(ctx, "delegations", broker.RootOf(parent), tmpl.Budgets.Delegations, parent.Deadline); err != nil {
		return broker.Grant{}, 0, time.Time{}, err
	}
	return g, depth, limit, nil
}

// childTask is the task delegated from parent to actor under grant g: same
// tree, subject, intent and DPoP key, one link longer.
func childTask(parent broker.Task, actor broker.Principal, tmpl *policy.Template, g broker.Grant, depth int, now time.Time) broker.Task {
	subject := parent.Subject
	if subject == "" {
		subject = parent.Agent
	}
	return broker.Task{
		ID: broker.NewID("tsk"), State: broker.StateActive, Agent: actor.Subject, Issuer: actor.Issuer, Template: tmpl.Name,
		Intent: parent.Intent, Tools: append(slices.Clone(g.Tools), g.ActionTools...), CreatedAt: now, Deadline: now.Add(g.TTL),
		Parent: parent.ID, Root: broker.RootOf(parent), Depth: depth, Subject: subject, SubjectIssuer: parent.SubjectIssuer,
		Act: append([]string{actor.Subject}, parent.Act...), JKT: parent.JKT,
		Chain: childChain(parent, actor),
	}
}

// childChain is the chain of agents of a task parent delegates to actor.
func childChain(parent broker.Task, actor broker.Principal) []broker.Link {
	return append(parent.Agents(), broker.Link{Agent: actor.Subject, Issuer: actor.Issuer})
}

// delegationDenied logs and audits a refused exchange and returns err.
func (s *Service) delegationDenied(ctx context.Context, parent broker.Task, actor broker.Principal, err error) error {
	var e *broker.Error
	rule := ""
	if errors.As(err, &e) {
		rule = e.Rule
	}
	s.log.WarnContext(ctx, "delegation denied", "parent", parent.ID, "agent", actor.Subject, "rule", rule, "reason", err.Error())
	ev := s.core.TaskEvent(ctx, "task.delegation_denied", actor.Subject, parent)
	ev.Outcome, ev.Rule, ev.Reason = "denied", rule, err.Error()
	if aerr := s.audit.Record(ctx, ev); aerr != nil {
		s.log.ErrorContext(ctx, "audit write of a denial failed", "err", aerr)
	}
	return err
}

// credentialIDs are the ids of what was minted, for the log.
func credentialIDs(ms []broker.Minted) []string {
	out := make([]string, len(ms))
	for i := range ms {
		out[i] = ms[i].ID
	}
	return out
}
