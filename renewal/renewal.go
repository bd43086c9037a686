package renewal

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

// Request is what an agent asks for in POST /v1/tasks/{id}/renew: more
// time for a live task. TTL is how long from now the task should live (the
// template's default when zero), never past its template's max_lifetime
// counted from the task's creation.
type Request struct {
	TaskID string
	TTL    time.Duration
	// Context is what the agent wants the template's conditions to see as
	// request.context, as in a declaration.
	Context map[string]any
	// User is the person a task on a user's behalf acts for, as verified
	// when they signed in (RenewAs): the template's users rule, as it is
	// now, must still admit them. A task on a user's behalf is not renewed
	// without it.
	User *broker.Principal
}

// Core is what a renewal needs of the domain core; *broker.Service
// implements it. Implementations must be safe for concurrent use.
type Core interface {
	// Authenticate verifies an agent's identity token: the fixed 401, or
	// 503 when its issuer cannot be reached.
	Authenticate(ctx context.Context, raw string) (broker.Principal, error)
	// GateRecordedTask is the gate for a task known by id: the task and
	// its own task token must still be live, no incident control on its
	// chain or template (401, 403 naming the rule, 503).
	GateRecordedTask(ctx context.Context, id string) (broker.Task, error)
	// Templates is the template set in force.
	Templates() *policy.Set
	// Issuers is every issuer to mint g with, task token first.
	Issuers(g broker.Grant) ([]broker.Issuer, error)
	// Mint mints g's credentials for task with issuers; what it made is
	// revoked at its source before it returns an error.
	Mint(ctx context.Context, task broker.Task, p broker.Principal, g broker.Grant, issuers []broker.Issuer) ([]broker.Minted, error)
	// RevokeAtSource kills creds at their issuers, queueing failures for
	// retry.
	RevokeAtSource(ctx context.Context, creds []broker.Credential, why string) (failed int)
	// RefuseUnaudited ends a task whose grant could not be audited.
	RefuseUnaudited(ctx context.Context, task broker.Task, creds []broker.Credential, cause error)
	// TaskEvent is an audit event about a task, stamped with the request id.
	TaskEvent(ctx context.Context, typ, actor string, t broker.Task) broker.Event
}

// Ledger is the part of broker.Ledger a renewal uses (see its contract
// there).
type Ledger interface {
	Task(ctx context.Context, id string) (broker.Task, []broker.Credential, error)
	Renew(ctx context.Context, id string, from, to time.Time, creds []broker.Credential) (broker.Task, error)
}

// Config holds a Service's dependencies. Core, Ledger and Auditor are
// required.
type Config struct {
	// Core is the broker's Service.
	Core   Core
	Ledger Ledger
	// Auditor records renewals and refused ones.
	Auditor broker.Auditor
	Now     func() time.Time
	Logger  *slog.Logger
}

// Service renews tasks. It is safe for concurrent use.
type Service struct {
	core   Core
	ledger Ledger
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
	if cfg.Ledger == nil {
		missing = append(missing, "ledger")
	}
	if cfg.Auditor == nil {
		missing = append(missing, "auditor")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("renewal: %s cannot be nil", strings.Join(missing, ", "))
	}
	s := &Service{core: cfg.Core, ledger: cfg.Ledger, audit: cfg.Auditor, now: cfg.Now, log: cfg.Logger}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Renew gives a live task a later deadline and fresh credentials that live
// until it. The caller proves who it is as for declaring (a fresh identity
// token of the task's agent); the task must be active and before its
// deadline (else 409), pass the gate (incident controls: 403 naming the
// rule; its task token revoked or under a revoked-before epoch: 401) and
// its template's principals, tools and conditions as they are now (403).
//
// The new deadline is now + TTL, cut to CreatedAt + the template's
// max_lifetime; a renewal that cannot move the deadline later is a 409.
// Every credential is minted again for the new deadline: the credentials
// handed out before keep their own expiry (a JWT's exp, a Vault token's
// explicit max TTL) and die by themselves at the old deadline, or with the
// task if it ends first. The new ones are recorded with the new deadline
// in one ledger write, then audited as task.renewed; nothing is handed out
// unless both succeeded.
//
// Delegated tasks and tasks acting on a user's behalf are not renewed (409):
// the first is bounded by its parent, the second by a user token the
// renewal does not carry.
func (s *Service) Renew(ctx context.Context, identityToken string, r Request) (broker.Task, []broker.Minted, error) {
	p, err := s.core.Authenticate(ctx, identityToken)
	if err != nil {
		return broker.Task{}, nil, err
	}
	return s.renew(ctx, p, r, false)
}

// RenewAs is Renew for the OAuth refresh_token grant (package oauth): p,
// the task's agent (the client), was authenticated by a refresh token
// that stands for the consent of the person the task acts for, so a task
// acting on a user's behalf is renewed too. Everything else is Renew's:
// the gate, the template as it is now, max_lifetime, one ledger write, the
// audit.
func (s *Service) RenewAs(ctx context.Context, p broker.Principal, r Request) (broker.Task, []broker.Minted, error) {
	return s.renew(ctx, p, r, true)
}

func (s *Service) renew(ctx context.Context, p broker.Principal, r Request, onBehalf bool) (broker.Task, []broker.Minted, error) {
	notFound := broker.Errorf(broker.CodeNotFound, "task %q not found", r.TaskID)
	lctx, cancel := broker.LedgerCtx(ctx)
	t, creds, err := s.ledger.Task(lctx, r.TaskID)
	cancel()
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return broker.Task{}, nil, notFound
	case err != nil:
		return broker.Task{}, nil, broker.Unavailable("the credential ledger", fmt.Errorf("reading task %s: %w", r.TaskID, err))
	case t.Agent != p.Subject || t.Issuer != p.Issuer:
		return broker.Task{}, nil, notFound // task ids cannot be probed
	}
	now := s.now()
	if err := renewable(t, now, onBehalf); err != nil {
		return broker.Task{}, nil, err
	}
	// The gate reads the task again: it must pass as it is now, with the
	// task token on record.
	if _, err := s.core.GateRecordedTask(ctx, t.ID); err != nil {
		return broker.Task{}, nil, err
	}
	g, deadline, err := s.decide(p, t, r, now)
	if err != nil {
		s.recordDenial(ctx, p, t, err)
		return broker.Task{}, nil, err
	}
	renewed := t
	renewed.Deadline = deadline
	issuers, err := s.core.Issuers(g)
	if err != nil {
		return broker.Task{}, nil, err
	}
	minted, err := s.core.Mint(ctx, renewed, p, g, issuers)
	if err != nil {
		return broker.Task{}, nil, err
	}
	fresh := credentialsOf(minted)
	lctx, cancel = broker.LedgerCtx(ctx)
	stored, err := s.ledger.Renew(lctx, t.ID, t.Deadline, deadline, fresh)
	cancel()
	if err != nil {
		s.core.RevokeAtSource(ctx, fresh, "renewal not recorded")
		switch {
		case errors.Is(err, broker.ErrNotActive):
			return broker.Task{}, nil, &broker.Error{Code: broker.CodeConflict, Message: fmt.Sprintf("task %s ended during the renewal (%s); nothing was issued", t.ID, stored.State), Err: err}
		case errors.Is(err, broker.ErrConflict):
			return broker.Task{}, nil, &broker.Error{Code: broker.CodeConflict, Message: fmt.Sprintf("task %s was renewed by another request meanwhile; nothing was issued: read the task and renew again if needed", t.ID), Err: err}
		case errors.Is(err, broker.ErrNotFound):
			return broker.Task{}, nil, notFound
		}
		return broker.Task{}, nil, broker.Unavailable("the credential ledger", fmt.Errorf("renewing task %s: %w", t.ID, err))
	}
	ev := s.core.TaskEvent(ctx, "task.renewed", p.Subject, stored)
	ev.Time, ev.Outcome = s.now().UTC(), "granted"
	for _, m := range minted {
		ev.Creds = append(ev.Creds, m.ID)
	}
	ev.Detail = map[string]any{"previous_deadline": t.Deadline, "deadline": stored.Deadline, "tools": stored.Tools}
	if err := s.audit.Record(ctx, ev); err != nil {
		// The renewal must not stand unaudited, and its credentials are
		// recorded: end the task, as an unaudited grant is.
		s.core.RefuseUnaudited(ctx, stored, append(slices.Clone(creds), fresh...), err)
		return broker.Task{}, nil, broker.Unavailable("the audit log", err)
	}
	s.log.InfoContext(ctx, "task renewed", "task_id", t.ID, "agent", t.Agent, "deadline", stored.Deadline)
	return stored, minted, nil
}

// renewable refuses, with a 409 that says why, a task renewal cannot apply
// to.
func renewable(t broker.Task, now time.Time, onBehalf bool) error {
	switch {
	case t.State != broker.StateActive:
		return broker.Errorf(broker.CodeConflict, "task %s already ended (%s): a task that ended cannot be renewed; declare a new one", t.ID, t.State)
	case !now.Before(t.Deadline):
		return broker.Errorf(broker.CodeConflict, "task %s passed its deadline %s: a task that ended cannot be renewed; declare a new one", t.ID, t.Deadline.UTC().Format(time.RFC3339))
	case t.Parent != "":
		return broker.Errorf(broker.CodeConflict, "task %s was delegated from task %s: renew the root task and exchange again", t.ID, t.Parent)
	case t.SubjectIssuer != "" && !onBehalf:
		return broker.Errorf(broker.CodeConflict, "task %s acts on behalf of a user: declare a new task with a fresh subject_token", t.ID)
	case len(t.Audiences) == 0:
		return broker.Errorf(broker.CodeConflict, "task %s was recorded before renewal existed: declare a new task", t.ID)
	}
	return nil
}

// decide applies the task's template, as it is now, to the renewal:
// the principal must still be admitted, every tool of the task still
// allowed, every condition true; audiences and scopes are what the task
// had, narrowed to what the template still lists. It answers the grant to
// mint and the new deadline.
func (s *Service) decide(p broker.Principal, t broker.Task, r Request, now time.Time) (broker.Grant, time.Time, error) {
	tmpl, ok := s.core.Templates().Get(t.Template)
	if !ok {
		return broker.Grant{}, time.Time{}, &broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf("template %q is not available to this agent", t.Template),
			Rule: "template", Err: errors.New("no such template")}
	}
	if admitted, err := tmpl.AdmitsPrincipal(p.PolicyIdentity()); err != nil || !admitted {
		return broker.Grant{}, time.Time{}, &broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf("template %q is not available to this agent", t.Template),
			Rule: "principals", Err: fmt.Errorf("principal %s/%s not admitted: %v", p.Issuer, p.Subject, err)}
	}
	if t.SubjectIssuer != "" {
		if err := admitsUser(tmpl, t, r.User); err != nil {
			return broker.Grant{}, time.Time{}, err
		}
	}
	var tools, actionTools []string
	for i, tool := range t.Tools {
		if _, sensitive := tmpl.SensitiveTool(tool); sensitive {
			actionTools = append(actionTools, tool)
			continue
		}
		if !tmpl.AllowsTool(tool) {
			return broker.Grant{}, time.Time{}, &broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf("tool %q is no longer allowed by template %q", tool, tmpl.Name),
				Rule: "tools", Field: fmt.Sprintf("tools[%d]", i)}
		}
		tools = append(tools, tool)
	}
	ttl := r.TTL
	switch {
	case ttl == 0:
		ttl = tmpl.DefaultTTL
	case ttl > tmpl.MaxTTL:
		return broker.Grant{}, time.Time{}, broker.InvalidField("ttl_seconds", "ttl_seconds %d exceeds the maximum of template %q (%d)",
			int64(ttl/time.Second), tmpl.Name, int64(tmpl.MaxTTL/time.Second))
	}
	lifetime := tmpl.MaxLifetime
	if lifetime < tmpl.MaxTTL {
		lifetime = tmpl.MaxTTL
	}
	deadline, limit := now.Add(ttl), t.CreatedAt.Add(lifetime)
	if deadline.After(limit) {
		deadline = limit
	}
	if deadline.Sub(t.Deadline) < time.Second && limit.Sub(t.Deadline) >= time.Second {
		return broker.Grant{}, time.Time{}, &broker.Error{Code: broker.CodeConflict, Field: "ttl_seconds",
			Message: fmt.Sprintf("a renewal for %s from now would not move task %s's deadline %s later: ask for a longer ttl_seconds (at most %d)",
				ttl, t.ID, t.Deadline.UTC().Format(time.RFC3339), int64(tmpl.MaxTTL/time.Second))}
	}
	if deadline.Sub(t.Deadline) < time.Second {
		return broker.Grant{}, time.Time{}, &broker.Error{Code: broker.CodeConflict, Rule: "max_lifetime",
			Message: fmt.Sprintf("task %s cannot be extended: template %q lets it live until %s at most (ttl.max_lifetime %s from its creation), and its deadline is %s",
				t.ID, tmpl.Name, limit.UTC().Format(time.RFC3339), lifetime, t.Deadline.UTC().Format(time.RFC3339))}
	}
	rule, err := tmpl.Check(p.PolicyIdentity(), nil,
		policy.Request{Template: t.Template, Intent: t.Intent, Tools: t.Tools, TTL: deadline.Sub(now), Context: r.Context}, now)
	if rule != "" {
		return broker.Grant{}, time.Time{}, &broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf("denied by rule %q of template %q", rule, tmpl.Name),
			Rule: rule, Err: err}
	}
	audiences := intersect(t.Audiences, tmpl.Audiences)
	if len(audiences) == 0 {
		return broker.Grant{}, time.Time{}, &broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf("template %q no longer lists any audience of task %s", tmpl.Name, t.ID), Rule: "audience"}
	}
	return broker.Grant{
		Template:    tmpl,
		Tools:       tools,
		ActionTools: actionTools,
		TTL:         deadline.Sub(now),
		Audiences:   audiences,
		Scopes:      intersect(t.Scopes, tmpl.Scopes),
	}, deadline, nil
}

// admitsUser is the users rule for a task acting on behalf of a person:
// the person the renewal carries must be the task's, and the template as
// it is now must still admit them.
func admitsUser(tmpl *policy.Template, t broker.Task, u *broker.Principal) error {
	refuse := func(why error) error {
		return &broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf("template %q no longer allows acting on behalf of this user", tmpl.Name),
			Rule: "users", Err: why}
	}
	switch {
	case u == nil:
		return refuse(fmt.Errorf("task %s acts for %s/%s, and the renewal names no user", t.ID, t.SubjectIssuer, t.Subject))
	case u.Issuer != t.SubjectIssuer || u.Subject != t.Subject:
		return refuse(fmt.Errorf("task %s acts for %s/%s, not %s/%s", t.ID, t.SubjectIssuer, t.Subject, u.Issuer, u.Subject))
	}
	if ok, err := tmpl.AdmitsUser(u.PolicyIdentity()); !ok {
		if len(tmpl.Users) == 0 {
			err = errors.New("template has no users block")
		}
		return refuse(fmt.Errorf("user %s/%s not admitted: %v", u.Issuer, u.Subject, err))
	}
	return nil
}

// intersect is the elements of a also in b, in a's order.
func intersect(a, b []string) []string {
	var out []string
	for _, v := range a {
		if slices.Contains(b, v) {
			out = append(out, v)
		}
	}
	return out
}

// recordDenial logs and audits a refused renewal (task.renewal_denied).
// The refusal stands whether or not the audit write succeeds.
func (s *Service) recordDenial(ctx context.Context, p broker.Principal, t broker.Task, cause error) {
	var e *broker.Error
	errors.As(cause, &e)
	rule := ""
	if e != nil {
		rule = e.Rule
	}
	s.log.WarnContext(ctx, "renewal denied", "task_id", t.ID, "agent", p.Subject, "issuer", p.Issuer, "template", t.Template, "rule", rule, "reason", cause.Error())
	ev := s.core.TaskEvent(ctx, "task.renewal_denied", p.Subject, t)
	ev.Outcome, ev.Rule, ev.Reason = "denied", rule, cause.Error()
	if err := s.audit.Record(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "audit write of a renewal denial failed", "err", err)
	}
}

func credentialsOf(ms []broker.Minted) []broker.Credential {
	out := make([]broker.Credential, len(ms))
	for i := range ms {
		out[i] = ms[i].Credential
	}
	return out
}
