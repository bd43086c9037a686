package broker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/valet-dev/valet/internal/requestid"
	"github.com/valet-dev/valet/policy"
)

// Timeouts that keep a dead dependency from hanging a request.
const (
	defaultMintTimeout   = 5 * time.Second
	defaultLedgerTimeout = 2 * time.Second
)

// LedgerCtx bounds one call to the ledger or another shared store, so a
// dead Redis fails the request instead of hanging it.
func LedgerCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, defaultLedgerTimeout)
}

// Config holds the Service's dependencies. Every field but Issuers, Now and
// Logger is required.
type Config struct {
	Identity Authenticator
	Tokens   TaskTokens
	// Issuers mint further credential kinds (Vault) beside the task token.
	Issuers   []Issuer
	Ledger    Ledger
	Auditor   Auditor
	Templates *policy.Set
	Now       func() time.Time
	Logger    *slog.Logger
	// Agent configures agent controls (delegation, DPoP, budgets); see
	// agent.go.
	Agent AgentConfig
	// ActionRevoker, when set, lets RevokeToken burn action tokens
	// (package stepup implements it). Without it no token is taken for one.
	ActionRevoker ActionRevoker
	// Controls, when set, is checked by every declaration (freeze,
	// quarantine, distrust); see incident.go.
	Controls ControlStore
	// Epochs, when set, makes introspection honour revoked-before epochs.
	Epochs EpochStore
	// Loss, when set, tells /readyz that the ledger lost its data (the
	// Redis ledger); a ledger held in memory dies with its broker and
	// needs none.
	Loss LossReporter

	// RevocationQueue, when set, keeps failed revocations at the source
	// for the retrier (package reconcile; rule 5). Without it a failure is
	// only logged.
	RevocationQueue RevocationQueue
	// Sightings, when set, hears of each agent granted a task (the agent
	// inventory); see sightings.go.
	Sightings Sightings
}

// Service is Valet's domain API. It is safe for concurrent use.
type Service struct {
	identity  Authenticator
	tokens    TaskTokens
	issuers   map[CredentialKind]Issuer
	extra     []Issuer
	ledger    Ledger
	audit     Auditor
	templates atomic.Pointer[policy.Set]
	now       func() time.Time
	log       *slog.Logger
	agent     agentControls
	actions   ActionRevoker
	controls  ControlStore
	epochs    EpochStore
	loss      LossReporter

	retryQ    RevocationQueue
	counters  revocationCounters
	refused   refusedTasks // refused.go
	sightings Sightings
}

// NewService checks cfg and builds a Service.
func NewService(cfg Config) (*Service, error) {
	var missing []string
	if cfg.Identity == nil {
		missing = append(missing, "identity")
	}
	if cfg.Tokens == nil {
		missing = append(missing, "task token issuer")
	}
	if cfg.Ledger == nil {
		missing = append(missing, "ledger")
	}
	if cfg.Auditor == nil {
		missing = append(missing, "auditor")
	}
	if cfg.Templates == nil {
		missing = append(missing, "templates")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("broker: %s cannot be nil", strings.Join(missing, ", "))
	}
	s := &Service{
		identity:  cfg.Identity,
		tokens:    cfg.Tokens,
		extra:     cfg.Issuers,
		ledger:    cfg.Ledger,
		audit:     cfg.Auditor,
		retryQ:    cfg.RevocationQueue,
		now:       cfg.Now,
		log:       cfg.Logger,
		controls:  cfg.Controls,
		epochs:    cfg.Epochs,
		loss:      cfg.Loss,
		actions:   cfg.ActionRevoker,
		sightings: cfg.Sightings,
	}
	var err error
	if s.issuers, err = IssuersByKind(append([]Issuer{cfg.Tokens}, cfg.Issuers...)); err != nil {
		return nil, err
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.templates.Store(cfg.Templates)
	s.agent.init(cfg.Agent)
	return s, nil
}

// SetTemplates swaps in a newly loaded template set. Tasks already declared
// keep the grant they got.
func (s *Service) SetTemplates(set *policy.Set) {
	if set != nil {
		s.templates.Store(set)
	}
}

// Templates returns the set in use.
func (s *Service) Templates() *policy.Set { return s.templates.Load() }

// Declare verifies the agent's identity, decides the declaration against its
// template, mints the task's credentials, records them and audits the grant.
// Nothing is returned unless every one of those steps succeeded; anything
// minted before a later step failed is revoked before Declare returns.
func (s *Service) Declare(ctx context.Context, identityToken string, d Declaration) (Task, []Minted, error) {
	return s.DeclareWith(ctx, s.identity, identityToken, d)
}

// DeclareWith is Declare for a caller that proves who it is with another
// credential than an identity token of a trusted issuer (the OAuth token
// endpoint's client assertions, or an assertion it has already checked for
// replay): auth verifies token in place of the Service's Authenticator,
// with the same error mapping; everything after is Declare's.
func (s *Service) DeclareWith(ctx context.Context, auth Authenticator, token string, d Declaration) (Task, []Minted, error) {
	p, err := s.authenticateWith(ctx, auth, token)
	if err != nil {
		return Task{}, nil, err
	}
	d.User = nil // only a verified subject_token sets it
	if d.SubjectToken != "" {
		u, err := s.authenticateUser(ctx, d.SubjectToken)
		if err != nil {
			return Task{}, nil, err
		}
		d.User = &u
	}
	if err := s.checkControls(ctx, p, d); err != nil {
		return Task{}, nil, err
	}
	now := s.now()
	g, err := s.decide(p, d, now)
	if err != nil {
		s.recordDenial(ctx, p, d, err)
		return Task{}, nil, err
	}
	jkt, err := s.bindDeclaration(ctx, d)
	if err != nil {
		return Task{}, nil, err
	}
	task := Task{
		JKT:       jkt,
		ID:        NewID("tsk"),
		State:     StateActive,
		Agent:     p.Subject,
		Issuer:    p.Issuer,
		Template:  g.Template.Name,
		Intent:    d.Intent,
		Tools:     append(slices.Clone(g.Tools), g.ActionTools...),
		CreatedAt: now,
		Deadline:  now.Add(g.TTL),
		Chain:     []Link{{Agent: p.Subject, Issuer: p.Issuer}},
	}
	actOnBehalf(&task, d.User)
	issuers, err := s.Issuers(g)
	if err != nil {
		return Task{}, nil, err
	}
	ev := s.TaskEvent(ctx, "task.granted", p.Subject, task)
	ev.Detail = map[string]any{"intent": task.Intent, "tools": task.Tools, "deadline": task.Deadline, "ttl_seconds": int64(g.TTL / time.Second)}
	onBehalfDetail(ev.Detail, task)
	minted, err := s.Issue(ctx, task, p, g, issuers, ev)
	if err != nil {
		return Task{}, nil, err
	}
	// One compact line: the audit record above holds the tools, deadline
	// and credential ids.
	s.log.InfoContext(ctx, "task granted", "task_id", task.ID, "agent", task.Agent, "issuer", task.Issuer, "template", task.Template)
	return task, minted, nil
}

// Authenticate verifies an agent's identity token, mapping identity
// failures to the fixed 401 (or 503 when the issuer is unreachable); the
// reason is only logged. Declarations and token exchanges (package
// delegation) authenticate their agents through it.
func (s *Service) Authenticate(ctx context.Context, raw string) (Principal, error) {
	return s.authenticateWith(ctx, s.identity, raw)
}

func (s *Service) authenticateWith(ctx context.Context, auth Authenticator, raw string) (Principal, error) {
	if raw == "" {
		return Principal{}, Unauthenticated(errors.New("no bearer token"))
	}
	p, err := auth.Authenticate(ctx, raw)
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return Principal{}, Unavailable("the identity provider", err)
		}
		s.log.WarnContext(ctx, "identity token rejected", "token_sha256", TokenHash(raw), "reason", err.Error())
		return Principal{}, Unauthenticated(err)
	}
	return p, nil
}

// decide applies the template to the declaration: the principal must be
// admitted, every tool allowed, the TTL within bounds and every condition
// true. The grant never holds more than the template and the request both
// allow.
func (s *Service) decide(p Principal, d Declaration, now time.Time) (Grant, error) {
	tmpl, ok := s.templates.Load().Get(d.Template)
	if !ok {
		return Grant{}, &Error{Code: CodeForbidden, Message: fmt.Sprintf("template %q is not available to this agent", d.Template),
			Rule: "template", Field: "template", Err: errors.New("no such template")}
	}
	admitted, err := tmpl.AdmitsPrincipal(p.PolicyIdentity())
	if err != nil || !admitted {
		return Grant{}, &Error{Code: CodeForbidden, Message: fmt.Sprintf("template %q is not available to this agent", d.Template),
			Rule: "principals", Field: "template", Err: fmt.Errorf("principal %s/%s not admitted: %v", p.Issuer, p.Subject, err)}
	}
	if err := checkUser(tmpl, d.User); err != nil {
		return Grant{}, err
	}
	var tools, actionTools []string
	for i, tool := range d.Tools {
		if _, sensitive := tmpl.SensitiveTool(tool); sensitive {
			actionTools = append(actionTools, tool) // granted as any tool; used only through action tokens
			continue
		}
		tools = append(tools, tool)
		if !tmpl.AllowsTool(tool) {
			return Grant{}, &Error{Code: CodeForbidden, Message: fmt.Sprintf("tool %q is not allowed by template %q", tool, tmpl.Name),
				Rule: "tools", Field: fmt.Sprintf("tools[%d]", i)}
		}
	}
	ttl := d.TTL
	switch {
	case ttl == 0:
		ttl = tmpl.DefaultTTL
	case ttl > tmpl.MaxTTL:
		return Grant{}, InvalidField("ttl_seconds", "ttl_seconds %d exceeds the maximum of template %q (%d)",
			int64(ttl/time.Second), tmpl.Name, int64(tmpl.MaxTTL/time.Second))
	}
	var user *policy.Identity
	if d.User != nil {
		u := d.User.PolicyIdentity()
		user = &u
	}
	rule, err := tmpl.Check(p.PolicyIdentity(), user,
		policy.Request{Template: d.Template, Intent: d.Intent, Tools: d.Tools, TTL: ttl, Context: d.Context}, now)
	if rule != "" {
		return Grant{}, &Error{Code: CodeForbidden, Message: fmt.Sprintf("denied by rule %q of template %q", rule, tmpl.Name),
			Rule: rule, Err: err}
	}
	audiences := tmpl.Audiences
	if len(d.Resources) > 0 {
		for i, res := range d.Resources {
			if !slices.Contains(tmpl.Audiences, res) {
				return Grant{}, &Error{Code: CodeForbidden, Message: fmt.Sprintf("resource %s is not an audience of template %q", QuoteUntrusted(res), tmpl.Name),
					Rule: "audience", Field: fmt.Sprintf("resource[%d]", i)}
			}
		}
		audiences = d.Resources
	}
	return Grant{
		Template:    tmpl,
		Tools:       tools,
		ActionTools: actionTools,
		TTL:         ttl,
		Audiences:   audiences,
		Scopes:      tmpl.Scopes,
	}, nil
}

// Issue is the one way a task gets credentials, declared or delegated
// (package delegation): it mints them with issuers (task token first),
// records the task and them in the ledger, then audits ev, the grant's
// event, with their ids. Nothing is returned unless all three succeeded:
// what was minted before a later step failed is revoked at its source, and
// a task recorded but not audited is ended (refused.go) before the 503.
func (s *Service) Issue(ctx context.Context, task Task, p Principal, g Grant, issuers []Issuer, ev Event) ([]Minted, error) {
	task.Audiences, task.Scopes = slices.Clone(g.Audiences), slices.Clone(g.Scopes) // package renewal re-mints within these
	minted, err := s.Mint(ctx, task, p, g, issuers)
	if err != nil {
		return nil, err
	}
	creds := credentialsOf(minted)
	ev.Time, ev.Outcome, ev.Creds = s.now().UTC(), "granted", credentialIDs(minted)
	lctx, cancel := LedgerCtx(ctx)
	if gr, ok := s.ledger.(GrantRecorder); ok {
		// One round trip: the records and the grant's line in the audit
		// stream (valet serve); the other auditors follow below.
		ev.Chained, err = gr.RecordGranted(lctx, task, creds, ev)
	} else {
		err = s.ledger.Record(lctx, task, creds)
	}
	cancel()
	if err != nil {
		s.revokeAtSource(ctx, creds, "ledger write failed")
		if errors.Is(err, ErrNotActive) && task.Parent != "" {
			return nil, Unauthenticated(fmt.Errorf("parent task %s ended during the exchange", task.Parent))
		}
		return nil, Unavailable("the credential ledger", fmt.Errorf("recording task %s: %w", task.ID, err))
	}
	if err := s.audit.Record(ctx, ev); err != nil {
		s.RefuseUnaudited(ctx, task, creds, err)
		return nil, Unavailable("the audit log", err)
	}
	if s.sightings != nil {
		s.sightings.Saw(p, task.Template, ev.Time)
	}
	return minted, nil
}

// Issuers is every issuer of this broker, task token first, for minting
// g; a 500 when g's template asks for Vault and no Vault is configured.
func (s *Service) Issuers(g Grant) ([]Issuer, error) {
	if g.Template.Vault != nil && s.issuers[KindVaultToken] == nil {
		return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("template %q asks for Vault credentials, but this broker has no Vault configured; nothing was issued", g.Template.Name)}
	}
	return append([]Issuer{s.tokens}, s.extra...), nil
}

// Mint asks each of issuers for its credentials, in order (Issue, and a
// renewal's fresh ones, package renewal). If one fails, or makes a
// credential that outlives the task, what was made is revoked first.
func (s *Service) Mint(ctx context.Context, task Task, p Principal, g Grant, issuers []Issuer) ([]Minted, error) {
	mctx, cancel := context.WithTimeout(ctx, defaultMintTimeout)
	defer cancel()
	var all []Minted
	for _, is := range issuers {
		m, err := is.Mint(mctx, task, p, g)
		if err != nil {
			s.revokeAtSource(ctx, credentialsOf(all), "a later mint failed")
			var nr *NotRevokedError
			if errors.As(err, &nr) {
				for _, c := range nr.Creds {
					s.counters.failed.Add(1)
					s.queueRevocation(ctx, c, 1, err)
				}
			}
			if errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
				return nil, Unavailable(fmt.Sprintf("the %s issuer", is.Kind()), err)
			}
			return nil, &Error{Code: CodeInternal, Message: "issuing credentials failed; nothing was issued", Err: fmt.Errorf("minting %s: %w", is.Kind(), err)}
		}
		for _, c := range m {
			if c.ExpiresAt.After(task.Deadline) {
				s.revokeAtSource(ctx, credentialsOf(append(all, m...)), "credential outlives its task")
				return nil, &Error{Code: CodeInternal, Message: "issuing credentials failed; nothing was issued",
					Err: fmt.Errorf("%s credential %s expires at %s, after the task deadline %s", c.Kind, c.ID, c.ExpiresAt, task.Deadline)}
			}
		}
		all = append(all, m...)
	}
	return all, nil
}

func credentialsOf(ms []Minted) []Credential {
	out := make([]Credential, len(ms))
	for i := range ms {
		out[i] = ms[i].Credential
	}
	return out
}

func credentialIDs(ms []Minted) []string {
	out := make([]string, len(ms))
	for i := range ms {
		out[i] = ms[i].ID
	}
	return out
}

// revokeAtSource kills credentials at their issuer, children before parents,
// and queues those it could not kill for retry; it returns how many failed.
// A JWT needs nothing here: it dies by the ledger's deny list and its exp.
func (s *Service) revokeAtSource(ctx context.Context, creds []Credential, why string) (failed int) {
	ctx = context.WithoutCancel(ctx)
	for i := len(creds) - 1; i >= 0; i-- {
		c := creds[i]
		is, ok := s.issuers[c.Kind]
		if !ok || c.Kind == KindJWT {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, defaultMintTimeout)
		err := is.Revoke(rctx, c)
		cancel()
		if err != nil {
			failed++
			s.counters.failed.Add(1)
			s.log.ErrorContext(ctx, "revoking credential at its source failed", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID, "why", why, "err", err)
			s.auditRevocationFailed(ctx, c, 1, why, err)
			s.queueRevocation(ctx, c, 1, err)
			continue
		}
		s.counters.revoked.Add(1)
		s.log.InfoContext(ctx, "credential revoked at its source", "kind", c.Kind, "credential", c.ID, "task_id", c.TaskID, "why", why)
	}
	return failed
}

// recordDenial logs and audits a refused declaration. The refusal stands
// whether or not the audit write succeeds.
func (s *Service) recordDenial(ctx context.Context, p Principal, d Declaration, cause error) {
	var e *Error
	errors.As(cause, &e)
	rule, reason := "", cause.Error()
	if e != nil {
		rule = e.Rule
	}
	s.log.WarnContext(ctx, "declaration denied", "agent", p.Subject, "issuer", p.Issuer, "template", d.Template,
		"tools", d.Tools, "rule", rule, "reason", reason)
	ev := s.TaskEvent(ctx, "task.denied", p.Subject, Task{Issuer: p.Issuer, Template: d.Template})
	ev.Outcome, ev.Rule, ev.Reason = "denied", rule, reason
	ev.Detail = map[string]any{"intent": d.Intent, "tools": d.Tools}
	if err := s.audit.Record(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "audit write of a denial failed", "err", err)
	}
}

// TaskRequest is how GET /v1/tasks/{id} and its completion were called:
// the bearer (a task token of the task, or the declaring agent's identity
// token) and, for a DPoP-bound task token, the request's proof and what it
// must name. Set by the HTTP layer.
type TaskRequest struct {
	ID, Bearer         string
	Proof, Method, URL string
}

// Task returns a task to a caller that owns it: the agent's identity token
// or one of the task's own live tokens (with its DPoP proof when bound).
// Both pass the gate: a frozen agent cannot read, a revoked token neither.
func (s *Service) Task(ctx context.Context, r TaskRequest) (Task, error) {
	return s.authorizeTaskCaller(ctx, r, false)
}

// Complete ends a task at the agent's request and revokes every credential
// it holds. Completing a completed task again answers the task unchanged.
// Completing only gives power up, so a frozen agent may; a revoked or
// expired task token may not.
func (s *Service) Complete(ctx context.Context, r TaskRequest) (Task, error) {
	t, err := s.authorizeTaskCaller(ctx, r, true)
	if err != nil {
		return Task{}, err
	}
	ended, _, err := s.End(ctx, t.ID, StateCompleted, "completed by the agent", t.Agent)
	if errors.Is(err, ErrNotActive) {
		if ended.State == StateCompleted {
			return ended, s.stillPending(ctx, ended, "completed again by the agent")
		}
		return ended, &Error{Code: CodeConflict, Message: fmt.Sprintf("task %s already ended: %s", t.ID, ended.State), Err: err}
	}
	if err != nil {
		return Task{}, err
	}
	return ended, nil
}

// stillPending answers a repeated completion or revocation truthfully: it
// revokes the ended task's credentials at their source again (revoking the
// dead is harmless) and says so if some are still live there. A task whose
// records expired has nothing left to revoke.
func (s *Service) stillPending(ctx context.Context, t Task, why string) error {
	lctx, cancel := LedgerCtx(ctx)
	_, creds, err := s.ledger.Task(lctx, t.ID)
	cancel()
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return Unavailable("the credential ledger", fmt.Errorf("reading task %s: %w", t.ID, err))
	}
	if failed := s.revokeAtSource(ctx, creds, why); failed > 0 {
		return pendingError(t.ID, failed)
	}
	return nil
}

// pendingError is the 503 of a task that ended but has credentials still
// live at their source.
func pendingError(id string, failed int) error {
	return &Error{Code: CodeUnavailable, Err: ErrRevocationPending,
		Message: fmt.Sprintf("task %s ended and its tokens are denied, but %d credential(s) could not be revoked at their source yet; they are retried until they expire", id, failed)}
}

// authorizeTaskCaller accepts a live task token of task id (with its DPoP
// proof when bound), or an identity token of the agent that declared it,
// and passes the caller through the gate: reading needs no incident
// control on the task's chain; completing (reducing) skips them. A task
// token of another task, or an agent that does not own the task, is 404,
// so task ids cannot be probed.
func (s *Service) authorizeTaskCaller(ctx context.Context, r TaskRequest, reducing bool) (Task, error) {
	id := r.ID
	notFound := Errorf(CodeNotFound, "task %q not found", id)
	if r.Bearer == "" {
		return Task{}, Unauthenticated(errors.New("no bearer token"))
	}
	if c, err := s.tokens.Verify(r.Bearer); err == nil {
		if c.TaskID != id {
			return Task{}, notFound
		}
		t, err := s.GateTaskToken(ctx, c, func(st *standing) { st.anyState, st.reducing = true, reducing })
		if err != nil {
			return Task{}, err
		}
		if err := s.CheckBoundProof(ctx, c, r.Proof, r.Method, r.URL, r.Bearer); err != nil {
			return Task{}, err
		}
		return t, nil
	}
	p, err := s.Authenticate(ctx, r.Bearer)
	if err != nil {
		return Task{}, err
	}
	lctx, cancel := LedgerCtx(ctx)
	t, _, err := s.ledger.Task(lctx, id)
	cancel()
	switch {
	case errors.Is(err, ErrNotFound):
		return Task{}, notFound
	case err != nil:
		return Task{}, Unavailable("the credential ledger", err)
	case t.Agent != p.Subject || t.Issuer != p.Issuer:
		return Task{}, notFound
	}
	if err := s.gate(ctx, standing{links: t.Links(), template: t.Template, task: &t, anyState: true, reducing: reducing}); err != nil {
		return Task{}, err
	}
	return t, nil
}

// End finishes a task in the ledger (which denies its JWTs in the same
// step), revokes its other credentials at their source and audits it,
// with actor as the audit's actor. A task already ended answers
// ErrNotActive with its record; a failure to revoke at the source answers
// ErrRevocationPending (the retry queue has it).
func (s *Service) End(ctx context.Context, id string, state State, reason, actor string) (Task, []Credential, error) {
	lctx, cancel := LedgerCtx(ctx)
	t, creds, err := s.ledger.End(lctx, id, state, reason, s.now())
	cancel()
	switch {
	case errors.Is(err, ErrNotActive):
		// Its descendants may have outlived a cascade that failed: end them.
		if cerr := s.endDescendants(ctx, t); cerr != nil {
			return t, nil, cerr
		}
		return t, nil, err
	case errors.Is(err, ErrNotFound):
		return Task{}, nil, Errorf(CodeNotFound, "task %q not found", id)
	case err != nil:
		return Task{}, nil, Unavailable("the credential ledger", fmt.Errorf("ending task %s: %w", id, err))
	}
	failed := s.revokeAtSource(ctx, creds, reason)
	ids := make([]string, len(creds))
	for i, c := range creds {
		ids[i] = c.ID
	}
	ev := s.TaskEvent(ctx, "task."+string(state), actor, t)
	ev.Reason, ev.Creds = reason, ids
	if err := s.audit.Record(ctx, ev); err != nil {
		// The credentials are dead already; losing the record of their
		// death must not bring them back.
		s.log.ErrorContext(ctx, "audit write of a task end failed", "task_id", id, "err", err)
	}
	s.log.InfoContext(ctx, "task ended", "task_id", id, "state", state, "reason", reason, "credentials", ids)
	if err := s.endDescendants(ctx, t); err != nil {
		return t, creds, err
	}
	if failed > 0 {
		return t, creds, pendingError(id, failed)
	}
	return t, creds, nil
}

// Introspection is the RFC 7662 answer for one token.
type Introspection struct {
	Active bool
	Claims TaskClaims
	Task   Task
}

// Introspect answers whether a task token is live: it verifies, is on
// record, is not denied and its task is active. Only a ledger that cannot
// be reached is an error (fail closed: nobody is told "active").
func (s *Service) Introspect(ctx context.Context, raw string) (Introspection, error) {
	c, err := s.tokens.Verify(raw)
	if err != nil {
		return Introspection{}, nil
	}
	t, err := s.GateTaskToken(ctx, c, nil)
	switch code := ErrorCode(err); {
	case err == nil:
		return Introspection{Active: true, Claims: c, Task: t}, nil
	case code == CodeUnavailable || code == CodeInternal:
		return Introspection{}, err
	}
	return Introspection{}, nil
}

// Revoke implements RFC 7009 for task tokens: revoking a task token revokes
// its task and every credential of it. A token that is not valid needs no
// revocation and answers success, as the RFC asks; a ledger that cannot be
// reached is an error, never a false success.
func (s *Service) Revoke(ctx context.Context, raw, actor string) error {
	c, err := s.tokens.Verify(raw)
	if err != nil {
		return nil
	}
	t, _, err := s.End(ctx, c.TaskID, StateRevoked, "revoked by "+actor, actor)
	if ErrorCode(err) == CodeNotFound {
		return s.denyUnrecorded(ctx, c, actor)
	}
	if errors.Is(err, ErrNotActive) {
		// Ended already: success only if nothing of it is live at its
		// source (a revocation may still be pending).
		return s.stillPending(ctx, t, "revoked again by "+actor)
	}
	return err
}

// Ready reports whether the service can issue: the ledger answers.
func (s *Service) Ready(ctx context.Context) error {
	lctx, cancel := LedgerCtx(ctx)
	defer cancel()
	if err := s.ledger.Ping(lctx); err != nil {
		return Unavailable("the credential ledger", err)
	}
	return nil
}

// ReadyWarning is what /readyz adds to a ready answer: that the ledger lost
// its data (Config.Loss), or "".
func (s *Service) ReadyWarning() string {
	if s.loss == nil {
		return ""
	}
	return s.loss.LossWarning()
}

// TaskEvent is an audit event of type typ about task t by actor, stamped
// with the Service's clock and the request's id.
func (s *Service) TaskEvent(ctx context.Context, typ, actor string, t Task) Event {
	return Event{
		Time:      s.now().UTC(),
		Type:      typ,
		RequestID: requestid.From(ctx),
		Actor:     actor,
		Issuer:    t.Issuer,
		TaskID:    t.ID,
		Template:  t.Template,
	}
}

// TokenHash is the first 12 hex digits of a token's SHA-256: enough to
// correlate log lines, useless to an attacker.
func TokenHash(raw string) string {
	sum := sha256.Sum256([]byte(raw))
	return fmt.Sprintf("%x", sum[:6])
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewID returns prefix_ followed by 128 random bits.
func NewID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return prefix + "_" + idEncoding.EncodeToString(b[:])
}
