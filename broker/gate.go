package broker

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The gate: the one place that decides "may this principal or task still
// act?". Every path that issues (declare, exchange, action tokens,
// approvals), consumes (action tokens), reports (tool-call events) or reads
// (a task, its events, introspection) asks it, so an incident control or a
// revoked-before epoch stops all of them at once. A new path that skips it
// is a hole.

// standing is what the gate is asked about.
type standing struct {
	// links are the principals acting or acted for: a task's Links(), or
	// the declaring agent (and user) of a declaration, or the chain of
	// the child an exchange would mint.
	links []Link
	// template is the task's (or declaration's) template.
	template string
	// task, when set, must be active and before its deadline (unless
	// anyState).
	task *Task
	// cred, when set, is the id of the task token presented (or on
	// record): it must be on record for task, not denied, not expired and
	// not issued at or before an epoch of any link, the template, or an
	// issuer of any link.
	cred string
	// issued is when the token presented says it was issued (its iat),
	// used when its record carries no time.
	issued time.Time
	// anyState lets an ended task through (reading, completing): its
	// token, when one is presented, must still be live.
	anyState bool
	// reducing skips the incident controls: the call only gives power up
	// (completing a task), which a frozen agent may always do.
	reducing bool
}

// gate decides whether st may still act. Refusals: 401 (fixed message)
// for a token or task that is not live, 403 naming the rule for an
// incident control, 503 when a store that decides cannot be reached.
func (s *Service) gate(ctx context.Context, st standing) error {
	now := s.now()
	if t := st.task; t != nil && !st.anyState && (t.State != StateActive || !now.Before(t.Deadline)) {
		return Unauthenticated(fmt.Errorf("task %s is %s", t.ID, t.State))
	}
	if st.cred != "" {
		if err := s.liveCredential(ctx, st, now); err != nil {
			return err
		}
	}
	if st.reducing {
		return nil
	}
	return s.CheckLinks(ctx, st.links, st.template)
}

// liveCredential is the credential half of the gate.
func (s *Service) liveCredential(ctx context.Context, st standing, now time.Time) error {
	lctx, cancel := LedgerCtx(ctx)
	defer cancel()
	var (
		cred   Credential
		denied bool
		before time.Time
		err    error
	)
	if s.epochs == nil {
		cred, denied, err = s.ledger.Credential(lctx, st.cred)
	} else {
		cred, denied, before, err = s.epochs.CredentialStatus(lctx, st.cred, EpochsOfLinks(st.links, st.template))
	}
	switch {
	case errors.Is(err, ErrNotFound):
		return Unauthenticated(fmt.Errorf("token %s is not on record", st.cred))
	case err != nil:
		return Unavailable("the credential ledger", err)
	case denied:
		return Unauthenticated(fmt.Errorf("token %s is revoked", st.cred))
	case st.task != nil && cred.TaskID != st.task.ID:
		return Unauthenticated(fmt.Errorf("token %s is not of task %s", st.cred, st.task.ID))
	case !now.Before(cred.ExpiresAt):
		return Unauthenticated(fmt.Errorf("token %s expired", st.cred))
	}
	issued := cred.IssuedAt
	if issued.IsZero() {
		issued = st.issued
	}
	if st.task != nil && !st.task.CreatedAt.IsZero() && (issued.IsZero() || st.task.CreatedAt.Before(issued)) {
		issued = st.task.CreatedAt
	}
	if !before.IsZero() && (issued.IsZero() || !issued.After(before)) {
		return Unauthenticated(fmt.Errorf("token %s was issued at or before a revoked-before epoch (%s)", st.cred, before.UTC().Format(time.RFC3339Nano)))
	}
	return nil
}

// CheckLinks is the incident-control half of the gate: a freeze of any
// agent in links, a distrust of any of their issuers, a quarantine of the
// template. Without a control store it passes everything. On its own it is
// the gate of a chain that has no task yet: the child a token exchange
// (package delegation) would mint.
func (s *Service) CheckLinks(ctx context.Context, links []Link, template string) error {
	if s.controls == nil {
		return nil
	}
	for _, l := range links {
		c, err := s.controls.Check(ctx, l.Issuer, l.Agent, template)
		if err != nil {
			return Unavailable("the control store", err)
		}
		if c == nil {
			continue
		}
		what := map[ControlKind]string{
			ControlFreezeAgent:        "agent " + c.Target + " is frozen",
			ControlQuarantineTemplate: "template " + c.Target + " is quarantined",
			ControlDistrustIssuer:     "issuer " + c.Target + " is distrusted",
		}[c.Kind]
		if c.Reason != "" {
			what += ": " + c.Reason
		}
		return &Error{Code: CodeForbidden, Message: what, Rule: c.Kind.Rule(), Err: fmt.Errorf("control %s", c.ID())}
	}
	return nil
}

// EpochsOfLinks are the epochs that can cover a credential of a task with
// these links and template: each link's agent epoch and its issuer's, and
// the template's. The gate checks exactly these; package incident's
// selectors must cover the same tasks.
func EpochsOfLinks(links []Link, template string) []Epoch {
	out := []Epoch{{Dimension: DimTemplate, Key: template}}
	seen := map[Epoch]bool{out[0]: true}
	for _, l := range links {
		for _, e := range []Epoch{{Dimension: DimAgent, Key: AgentKey(l.Issuer, l.Agent)}, {Dimension: DimIssuer, Key: l.Issuer}} {
			if !seen[e] {
				seen[e] = true
				out = append(out, e)
			}
		}
	}
	return out
}

// taskStanding is the standing of a task and the task token c presented
// for it: the task's links plus what the token itself names (so a token
// never escapes an epoch its claims fall under).
func taskStanding(t Task, c TaskClaims) standing {
	links := t.Links()
	links = append(links, Link{Agent: c.Subject, Issuer: c.AgentIssuer})
	if a := c.Actor(); a != c.Subject {
		links = append(links, Link{Agent: a, Issuer: c.AgentIssuer})
	}
	return standing{links: links, template: t.Template, task: &t, cred: c.ID, issued: c.IssuedAt}
}

// tokenOf is the id of a task's own task token (its JWT credential; of a
// renewed task, the one that expires last), or "".
func tokenOf(creds []Credential) string {
	var last *Credential
	for i, c := range creds {
		if c.Kind == KindJWT && (last == nil || c.ExpiresAt.After(last.ExpiresAt)) {
			last = &creds[i]
		}
	}
	if last == nil {
		return ""
	}
	return last.ID
}

// GateTaskToken is the gate for a verified task token: its task is read
// from the ledger and, with the token, must pass st's checks. Any refusal
// of the token or its task is the fixed 401.
func (s *Service) GateTaskToken(ctx context.Context, c TaskClaims, adjust func(*standing)) (Task, error) {
	lctx, cancel := LedgerCtx(ctx)
	t, _, err := s.ledger.Task(lctx, c.TaskID)
	cancel()
	switch {
	case errors.Is(err, ErrNotFound):
		return Task{}, Unauthenticated(fmt.Errorf("task %s is not on record", c.TaskID))
	case err != nil:
		return Task{}, Unavailable("the credential ledger", err)
	}
	st := taskStanding(t, c)
	if adjust != nil {
		adjust(&st)
	}
	if err := s.gate(ctx, st); err != nil {
		return Task{}, err
	}
	return t, nil
}

// GateRecordedTask is the gate for a task known by id (an action token's
// or an approval's task): the task and its own task token must pass.
func (s *Service) GateRecordedTask(ctx context.Context, id string) (Task, error) {
	lctx, cancel := LedgerCtx(ctx)
	t, creds, err := s.ledger.Task(lctx, id)
	cancel()
	switch {
	case errors.Is(err, ErrNotFound):
		return Task{}, Unauthenticated(fmt.Errorf("task %s is not on record", id))
	case err != nil:
		return Task{}, Unavailable("the credential ledger", err)
	}
	st := standing{links: t.Links(), template: t.Template, task: &t, cred: tokenOf(creds)}
	if st.cred == "" {
		return Task{}, Unauthenticated(fmt.Errorf("task %s has no task token on record", id))
	}
	return t, s.gate(ctx, st)
}
