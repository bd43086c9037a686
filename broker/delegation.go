package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valet-dev/valet/policy"
)

// Token exchange (RFC 8693) parameters and types Valet accepts.
const (
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeIDToken       = "urn:ietf:params:oauth:token-type:id_token"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
)

// maxTreeNodes bounds one cascade: more descendants than this are left
// to die by their own deadlines, which never pass their root's.
const maxTreeNodes = 100_000

// DelegationRequest is a token exchange as the agent sent it.
type DelegationRequest struct {
	SubjectToken string
	ActorToken   string
	Tools        []string
	Audiences    []string
	Scopes       []string
	TTL          time.Duration // 0: as long as the parent has left
	// Proof is the request's DPoP header, Method and URL what it must
	// name; set by the HTTP layer.
	Proof       string
	Method, URL string
}

// DecodeTokenExchange reads the form of POST /v1/token. A missing subject or
// actor token is an error, never a fallback to the caller's identity.
func DecodeTokenExchange(form url.Values) (DelegationRequest, error) {
	for k, v := range form {
		if len(v) > 1 && k != "resource" && k != "audience" {
			return DelegationRequest{}, InvalidField(k, "parameter %s is given more than once", k)
		}
	}
	switch {
	case form.Get("grant_type") != GrantTypeTokenExchange:
		return DelegationRequest{}, InvalidField("grant_type", "grant_type must be %s", GrantTypeTokenExchange)
	case form.Get("subject_token") == "":
		return DelegationRequest{}, InvalidField("subject_token", "subject_token is required: the parent task token")
	case form.Get("subject_token_type") != TokenTypeAccessToken:
		return DelegationRequest{}, InvalidField("subject_token_type", "subject_token_type must be %s", TokenTypeAccessToken)
	case form.Get("actor_token") == "":
		return DelegationRequest{}, InvalidField("actor_token", "actor_token is required: the sub-agent's identity token")
	case form.Get("actor_token_type") != TokenTypeIDToken && form.Get("actor_token_type") != TokenTypeJWT:
		return DelegationRequest{}, InvalidField("actor_token_type", "actor_token_type must be %s or %s", TokenTypeIDToken, TokenTypeJWT)
	}
	if rt := form.Get("requested_token_type"); rt != "" && rt != TokenTypeAccessToken {
		return DelegationRequest{}, InvalidField("requested_token_type", "requested_token_type must be %s", TokenTypeAccessToken)
	}
	r := DelegationRequest{SubjectToken: form.Get("subject_token"), ActorToken: form.Get("actor_token")}
	var err error
	if r.Tools, err = spaceList(form.Get("tools"), "tools", maxTools, maxToolName); err != nil {
		return r, err
	}
	if len(r.Tools) == 0 {
		return r, InvalidField("tools", "tools is required: the space-separated tools the sub-agent needs")
	}
	if err := checkToolNames("tools", r.Tools); err != nil {
		return r, err
	}
	if r.Scopes, err = spaceList(form.Get("scope"), "scope", 64, 256); err != nil {
		return r, err
	}
	if !form.Has("scope") {
		r.Scopes = nil // no scope asked for: the parent's, as far as the template still allows
	}
	for _, k := range []string{"audience", "resource"} {
		for i, a := range form[k] {
			if a == "" || len(a) > 512 || !utf8.ValidString(a) {
				return r, InvalidField(fmt.Sprintf("%s[%d]", k, i), "%s must be a non-empty string of at most 512 bytes", k)
			}
			if !slices.Contains(r.Audiences, a) {
				r.Audiences = append(r.Audiences, a)
			}
		}
	}
	if v := form.Get("ttl_seconds"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n > int64(maxTTL/time.Second) {
			return r, InvalidField("ttl_seconds", "ttl_seconds must be a whole number from 1 to %d", int64(maxTTL/time.Second))
		}
		r.TTL = time.Duration(n) * time.Second
	}
	return r, nil
}

// spaceList splits a space-separated parameter, refusing duplicates.
func spaceList(v, field string, maxItems, maxLen int) ([]string, error) {
	items := strings.Fields(v)
	if len(items) > maxItems {
		return nil, InvalidField(field, "%s may list at most %d entries", field, maxItems)
	}
	for i, it := range items {
		if len(it) > maxLen || !utf8.ValidString(it) {
			return nil, InvalidField(fmt.Sprintf("%s[%d]", field, i), "%s entry %d must be valid UTF-8 of at most %d bytes", field, i, maxLen)
		}
		if slices.Contains(items[:i], it) {
			return nil, InvalidField(field, "%s lists %q twice", field, it)
		}
	}
	return items, nil
}

// ParentGrant is what a parent task token holds, as far as attenuation is
// concerned.
type ParentGrant struct {
	Tools       []string
	ActionTools []string
	Audiences   []string
	Scopes      []string
	Deadline    time.Time // the earlier of the task's deadline and the token's exp
	Depth       int
}

// Attenuate decides a child grant: every tool, audience and scope the child
// gets is held by the parent and still allowed by the template, and the
// child ends at or before the parent. Asking for more is an error naming
// what was asked; nothing is ever widened or silently dropped. It returns
// the grant and the child's depth.
func Attenuate(tmpl *policy.Template, parent ParentGrant, req DelegationRequest, now time.Time) (Grant, int, error) {
	deny := func(rule, field, format string, args ...any) (Grant, int, error) {
		return Grant{}, 0, &Error{Code: CodeForbidden, Message: fmt.Sprintf(format, args...), Rule: rule, Field: field}
	}
	if tmpl.Delegation == nil {
		return deny("delegation", "", "template %q does not allow delegation", tmpl.Name)
	}
	depth := parent.Depth + 1
	if depth > tmpl.Delegation.MaxDepth {
		return deny("delegation.max_depth", "", "delegation depth %d exceeds the maximum of template %q (%d)", depth, tmpl.Name, tmpl.Delegation.MaxDepth)
	}
	if len(req.Tools) == 0 {
		return Grant{}, 0, InvalidField("tools", "tools is required")
	}
	var tools, actionTools []string
	for _, tool := range req.Tools {
		if _, sensitive := tmpl.SensitiveTool(tool); sensitive {
			// A sensitive tool attenuates like any tool: only one the
			// parent holds, still sensitive in the template.
			if !slices.Contains(parent.ActionTools, tool) {
				return deny("tools", "tools", "tool %q is not held by the parent task", tool)
			}
			actionTools = append(actionTools, tool)
			continue
		}
		if !slices.Contains(parent.Tools, tool) || !tmpl.AllowsTool(tool) {
			return deny("tools", "tools", "tool %q is not held by the parent task", tool)
		}
		tools = append(tools, tool)
	}
	auds := req.Audiences
	if len(auds) == 0 {
		auds = parent.Audiences
	}
	var grantedAuds []string
	for _, a := range auds {
		if !slices.Contains(parent.Audiences, a) || !slices.Contains(tmpl.Audiences, a) {
			return deny("audience", "audience", "audience %q is not held by the parent task", a)
		}
		grantedAuds = append(grantedAuds, a)
	}
	if len(grantedAuds) == 0 {
		return deny("audience", "audience", "the parent task holds no audience to delegate")
	}
	scopes := req.Scopes
	if scopes == nil {
		scopes = parent.Scopes
	}
	var grantedScopes []string
	for _, sc := range scopes {
		if !slices.Contains(parent.Scopes, sc) || !slices.Contains(tmpl.Scopes, sc) {
			if req.Scopes == nil {
				continue // the parent's scope the template no longer allows
			}
			return deny("scope", "scope", "scope %q is not held by the parent task", sc)
		}
		grantedScopes = append(grantedScopes, sc)
	}
	remaining := parent.Deadline.Sub(now).Truncate(time.Second)
	if remaining < time.Second {
		return deny("ttl", "", "the parent task has less than a second left")
	}
	ttl := req.TTL
	switch {
	case ttl == 0:
		ttl = min(remaining, tmpl.MaxTTL)
	case ttl > remaining:
		return deny("ttl", "ttl_seconds", "ttl_seconds %d exceeds the parent task's remaining %d seconds", int64(ttl/time.Second), int64(remaining/time.Second))
	case ttl > tmpl.MaxTTL:
		return Grant{}, 0, InvalidField("ttl_seconds", "ttl_seconds %d exceeds the maximum of template %q (%d)", int64(ttl/time.Second), tmpl.Name, int64(tmpl.MaxTTL/time.Second))
	}
	return Grant{
		Template:    tmpl,
		Tools:       tools,
		ActionTools: actionTools,
		TTL:         ttl,
		Audiences:   grantedAuds,
		Scopes:      grantedScopes,
	}, depth, nil
}

// Delegate implements token exchange: the holder of a live task token asks
// for a narrower task token for a sub-agent, who proves its identity with
// its own identity token. The child task is recorded under its parent, so
// ending the parent ends it; nothing is handed out unless the ledger and
// the audit trail both took it.
func (s *Service) Delegate(ctx context.Context, req DelegationRequest) (Task, []Minted, error) {
	pc, parent, actor, err := s.exchangeParties(ctx, req)
	if err != nil {
		return Task{}, nil, err
	}
	tmpl, err := s.admitDelegation(ctx, parent, actor)
	if err != nil {
		return Task{}, nil, s.delegationDenied(ctx, parent, actor, err)
	}
	now := s.now()
	g, depth, limit, err := s.attenuateDelegation(ctx, tmpl, pc, parent, req, now)
	if err != nil {
		return Task{}, nil, s.delegationDenied(ctx, parent, actor, err)
	}
	child := childTask(parent, actor, tmpl, g, depth, now)
	if child.Deadline.After(limit) { // Attenuate guarantees this; a second lock on the door.
		return Task{}, nil, &Error{Code: CodeInternal, Message: "issuing credentials failed; nothing was issued",
			Err: fmt.Errorf("child deadline %s after parent's %s", child.Deadline, limit)}
	}
	ev := s.TaskEvent(ctx, "task.delegated", actor.Subject, child)
	ev.Detail = map[string]any{"parent": parent.ID, "root": child.Root, "depth": depth, "act": child.Act, "subject": child.Subject,
		"tools": child.Tools, "audiences": g.Audiences, "deadline": child.Deadline}
	minted, err := s.issue(ctx, child, actor, g, []Issuer{s.tokens}, ev) // a child gets a task token only
	if err != nil {
		return Task{}, nil, err
	}
	s.log.InfoContext(ctx, "task delegated", "task_id", child.ID, "parent", parent.ID, "agent", child.Agent,
		"depth", depth, "tools", child.Tools, "deadline", child.Deadline, "credentials", credentialIDs(minted))
	return child, minted, nil
}

// exchangeParties checks both sides of a token exchange: the subject token
// (verified, its task live, its DPoP proof when bound) and the actor's
// identity token. It returns the subject token's claims, its task (the
// parent) and the actor.
func (s *Service) exchangeParties(ctx context.Context, req DelegationRequest) (TaskClaims, Task, Principal, error) {
	if req.SubjectToken == "" || req.ActorToken == "" {
		return TaskClaims{}, Task{}, Principal{}, Errorf(CodeInvalid, "subject_token and actor_token are both required")
	}
	pc, err := s.tokens.Verify(req.SubjectToken)
	if err != nil {
		s.log.WarnContext(ctx, "subject token rejected", "token_sha256", TokenHash(req.SubjectToken), "reason", err.Error())
		return TaskClaims{}, Task{}, Principal{}, Unauthenticated(fmt.Errorf("subject token: %w", err))
	}
	parent, err := s.LiveTask(ctx, pc)
	if err != nil {
		return TaskClaims{}, Task{}, Principal{}, err
	}
	if err := s.CheckBoundProof(ctx, pc, req.Proof, req.Method, req.URL, req.SubjectToken); err != nil {
		return TaskClaims{}, Task{}, Principal{}, err
	}
	actor, err := s.authenticate(ctx, req.ActorToken)
	if err != nil {
		return TaskClaims{}, Task{}, Principal{}, err
	}
	return pc, parent, actor, nil
}

// admitDelegation decides whether parent may delegate to actor at all: the
// child's whole chain, the sub-agent and its issuer included, passes the
// gate before anything is spent or minted for it; the parent's template
// must still exist and its delegation condition admit the actor. It
// returns that template.
func (s *Service) admitDelegation(ctx context.Context, parent Task, actor Principal) (*policy.Template, error) {
	childLinks := Task{Chain: childChain(parent, actor), Subject: parent.Subject, SubjectIssuer: parent.SubjectIssuer}.Links()
	if err := s.gate(ctx, standing{links: childLinks, template: parent.Template}); err != nil {
		return nil, err
	}
	tmpl, ok := s.templates.Load().Get(parent.Template)
	if !ok {
		return nil, &Error{Code: CodeForbidden, Message: fmt.Sprintf("template %q is no longer available", parent.Template), Rule: "template"}
	}
	if tmpl.Delegation != nil {
		if ok, cerr := tmpl.Delegation.Condition.EvalClaims(actor.Claims); !ok {
			return nil, &Error{Code: CodeForbidden, Message: fmt.Sprintf("template %q does not allow delegation to this agent", tmpl.Name),
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
func (s *Service) attenuateDelegation(ctx context.Context, tmpl *policy.Template, pc TaskClaims, parent Task, req DelegationRequest, now time.Time) (Grant, int, time.Time, error) {
	limit := parent.Deadline
	if pc.ExpiresAt.Before(limit) {
		limit = pc.ExpiresAt
	}
	g, depth, err := Attenuate(tmpl, ParentGrant{
		Tools: pc.Tools, ActionTools: pc.ActionTools, Audiences: pc.Audience, Scopes: strings.Fields(pc.Scope), Deadline: limit, Depth: parent.Depth,
	}, req, now)
	if err != nil {
		return Grant{}, 0, time.Time{}, err
	}
	if err := s.Spend(ctx, "delegations", rootOf(parent), tmpl.Budgets.Delegations, parent.Deadline); err != nil {
		return Grant{}, 0, time.Time{}, err
	}
	return g, depth, limit, nil
}

// childTask is the task delegated from parent to actor under grant g: same
// tree, subject, intent and DPoP key, one link longer.
func childTask(parent Task, actor Principal, tmpl *policy.Template, g Grant, depth int, now time.Time) Task {
	subject := parent.Subject
	if subject == "" {
		subject = parent.Agent
	}
	return Task{
		ID: NewID("tsk"), State: StateActive, Agent: actor.Subject, Issuer: actor.Issuer, Template: tmpl.Name,
		Intent: parent.Intent, Tools: append(slices.Clone(g.Tools), g.ActionTools...), CreatedAt: now, Deadline: now.Add(g.TTL),
		Parent: parent.ID, Root: rootOf(parent), Depth: depth, Subject: subject, SubjectIssuer: parent.SubjectIssuer,
		Act: append([]string{actor.Subject}, parent.Act...), JKT: parent.JKT,
		Chain: childChain(parent, actor),
	}
}

// childChain is the chain of agents of a task parent delegates to actor.
func childChain(parent Task, actor Principal) []Link {
	return append(parent.agents(), Link{Agent: actor.Subject, Issuer: actor.Issuer})
}

// rootOf is the id of the first task of t's delegation tree.
func rootOf(t Task) string {
	if t.Root == "" {
		return t.ID
	}
	return t.Root
}

// LiveTask passes a verified task token through the gate (gate.go) and
// returns its task: on record, not denied, not covered by an epoch, its
// task active, and no incident control on its chain or template.
func (s *Service) LiveTask(ctx context.Context, c TaskClaims) (Task, error) {
	return s.GateTaskToken(ctx, c, nil)
}

// delegationDenied logs and audits a refused exchange and returns err.
func (s *Service) delegationDenied(ctx context.Context, parent Task, actor Principal, err error) error {
	var e *Error
	rule := ""
	if errors.As(err, &e) {
		rule = e.Rule
	}
	s.log.WarnContext(ctx, "delegation denied", "parent", parent.ID, "agent", actor.Subject, "rule", rule, "reason", err.Error())
	ev := s.TaskEvent(ctx, "task.delegation_denied", actor.Subject, parent)
	ev.Outcome, ev.Rule, ev.Reason = "denied", rule, err.Error()
	if aerr := s.audit.Record(ctx, ev); aerr != nil {
		s.log.ErrorContext(ctx, "audit write of a denial failed", "err", aerr)
	}
	return err
}

// Spend counts one use of budget for the task tree of root and refuses it
// over limit (0: no cap). The counter lives until the later of the
// deadlines it is given, so it outlives every task that can spend from it.
func (s *Service) Spend(ctx context.Context, budget, root string, limit int, until time.Time) error {
	if limit <= 0 {
		return nil
	}
	if s.agent.limiter == nil {
		return Unavailable("the budget store", errNoLimiter)
	}
	lctx, cancel := LedgerCtx(ctx)
	n, err := s.agent.limiter.Count(lctx, budget+":"+root, until)
	cancel()
	if err != nil {
		return Unavailable("the budget store", err)
	}
	if n > int64(limit) {
		return &Error{Code: CodeForbidden, Message: fmt.Sprintf("budget %q of %d is spent", budget, limit), Rule: "budgets." + budget}
	}
	return nil
}

// endDescendants ends every task delegated, directly or not, from t:
// breadth first over the ledger's children sets, with a visited set so no
// id is handled twice, and at most maxTreeNodes of them. Descendants that
// already ended are still walked, so a cascade cut short by a ledger outage
// finishes when the parent is ended (or revoked) again.
func (s *Service) endDescendants(ctx context.Context, t Task) error {
	ctx = context.WithoutCancel(ctx)
	reason := fmt.Sprintf("ancestor task %s ended (%s)", t.ID, t.State)
	visited := map[string]bool{t.ID: true}
	queue := []string{t.ID}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		lctx, cancel := LedgerCtx(ctx)
		kids, err := s.ledger.Children(lctx, id)
		cancel()
		if err != nil {
			return Unavailable("the credential ledger", fmt.Errorf("listing children of task %s: %w", id, err))
		}
		for _, kid := range kids {
			if visited[kid] {
				continue
			}
			if len(visited) >= maxTreeNodes {
				s.log.ErrorContext(ctx, "delegation tree too large to end at once; the rest end by their deadlines",
					"task_id", t.ID, "limit", maxTreeNodes)
				return nil
			}
			visited[kid] = true
			queue = append(queue, kid)
			lctx, cancel := LedgerCtx(ctx)
			ct, creds, err := s.ledger.End(lctx, kid, StateRevoked, reason, s.now())
			cancel()
			switch {
			case errors.Is(err, ErrNotActive), errors.Is(err, ErrNotFound):
				continue
			case err != nil:
				return Unavailable("the credential ledger", fmt.Errorf("ending descendant %s of task %s: %w", kid, t.ID, err))
			}
			s.revokeAtSource(ctx, creds, reason)
			ev := s.TaskEvent(ctx, "task.revoked", "valet", ct)
			ev.Reason = reason
			for _, c := range creds {
				ev.Creds = append(ev.Creds, c.ID)
			}
			if err := s.audit.Record(ctx, ev); err != nil {
				s.log.ErrorContext(ctx, "audit write of a task end failed", "task_id", kid, "err", err)
			}
		}
	}
	return nil
}
