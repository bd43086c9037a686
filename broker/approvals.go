package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// DefaultApprovalTimeout is how long an approval stays pending when the
// configuration sets no timeout.
const DefaultApprovalTimeout = 5 * time.Minute

// maxPendingList bounds one listing of approvals.
const maxPendingList = 1000

// ApprovalConfig configures the approval rule of sensitive tools.
type ApprovalConfig struct {
	// Clients may list, approve and deny (HTTP Basic). Only the SHA-256 of
	// each secret is kept.
	Clients []Client
	// Authorize, when set, replaces Clients: it checks an approver's
	// credentials and returns a name for the audit trail, or an error.
	Authorize func(ctx context.Context, id, secret string) (string, error)
	// Timeout is how long an approval stays pending (default 5 m), never
	// beyond its task's deadline. A pending approval past it is denied.
	Timeout time.Duration
	// WebhookURL, when set, receives a POST (JSON, no argument values, no
	// secrets) for each new approval, with a 3 s timeout; failures are
	// logged and never block the answer.
	WebhookURL string
	// WebhookClient posts to WebhookURL; default http.Client with the 3 s
	// timeout.
	WebhookClient *http.Client
}

func (a *agentControls) initApprovals(cfg ApprovalConfig) error {
	if cfg.Timeout < 0 {
		return errors.New("broker: approval timeout must not be negative")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultApprovalTimeout
	}
	if cfg.WebhookClient == nil {
		cfg.WebhookClient = &http.Client{Timeout: 3 * time.Second}
	}
	if cfg.Authorize == nil {
		clients := slices.Clone(cfg.Clients)
		cfg.Authorize = func(_ context.Context, id, secret string) (string, error) {
			sum := sha256.Sum256([]byte(secret))
			for _, c := range clients {
				if subtle.ConstantTimeCompare([]byte(c.ID), []byte(id)) == 1 && subtle.ConstantTimeCompare(c.SecretSHA256[:], sum[:]) == 1 {
					return "approver:" + c.ID, nil
				}
			}
			return "", errors.New("bad approver credentials")
		}
	}
	a.approvals = cfg
	return nil
}

// ApprovalState is where an approval is in its life.
type ApprovalState string

const (
	ApprovalPending  ApprovalState = "pending"
	ApprovalApproved ApprovalState = "approved"
	ApprovalDenied   ApprovalState = "denied"
	// ApprovalExpired: nobody decided in time; it counts as denied.
	ApprovalExpired ApprovalState = "expired"
	// ApprovalIssued: approved, and its action token was handed out (once).
	ApprovalIssued ApprovalState = "issued"
)

// Approval is one call of a sensitive tool waiting for (or past) a human
// decision. It carries what Valet knows, not only what the agent says:
// the tool and arguments asked for, and the task's recorded intent, agent,
// template and delegation chain. Context is the agent's own account.
type Approval struct {
	ID        string          `json:"id"`
	State     ApprovalState   `json:"state"`
	TaskID    string          `json:"task_id"`
	Tool      string          `json:"tool"`
	Args      json.RawMessage `json:"args"`
	ArgsHash  string          `json:"args_hash"`
	ShowArgs  bool            `json:"show_args,omitempty"`
	Intent    string          `json:"intent"`
	Agent     string          `json:"agent"`
	Issuer    string          `json:"issuer"`
	Template  string          `json:"template"`
	Subject   string          `json:"subject,omitempty"`
	Act       []string        `json:"act,omitempty"`
	Resource  map[string]any  `json:"resource,omitempty"`
	Context   map[string]any  `json:"agent_context,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	ExpiresAt time.Time       `json:"expires_at"`
	Deadline  time.Time       `json:"task_deadline"`
	DecidedBy string          `json:"decided_by,omitempty"`
	DecidedAt time.Time       `json:"decided_at,omitzero"`
	Reason    string          `json:"reason,omitempty"`
	ActionJTI string          `json:"action_jti,omitempty"`
}

// fileApproval records a pending approval (until the task's deadline, so a
// poll after the timeout learns it was denied), audits it, and tells the
// webhook in the background.
func (s *Service) fileApproval(ctx context.Context, task Task, c TaskClaims, req ActionRequest, st *SensitiveTool, resource map[string]any) (Approval, error) {
	store, err := s.recordsStore()
	if err != nil {
		return Approval{}, err
	}
	now := s.now()
	exp := now.Add(s.agent.approvals.Timeout)
	if task.Deadline.Before(exp) {
		exp = task.Deadline
	}
	a := Approval{ID: newID("apr"), State: ApprovalPending, TaskID: task.ID, Tool: req.Tool, Args: req.Args,
		ArgsHash: hashOf(req.Args), ShowArgs: st.ShowArgs, Intent: task.Intent, Agent: task.Agent, Issuer: task.Issuer,
		Template: task.Template, Subject: task.Subject, Act: task.Act, Resource: resource, Context: req.Context,
		CreatedAt: now, ExpiresAt: exp, Deadline: task.Deadline}
	b, err := json.Marshal(a)
	if err != nil {
		return Approval{}, invalidField("context", "context cannot be stored: %v", err)
	}
	lctx, cancel := context.WithTimeout(ctx, defaultLedgerTimeout)
	err = store.Put(lctx, "approval", a.ID, b, task.Deadline)
	cancel()
	if err != nil {
		return Approval{}, unavailable("the record store", fmt.Errorf("recording approval %s: %w", a.ID, err))
	}
	ev := s.event(ctx, "approval.requested", task.Agent, task)
	ev.Outcome = "pending"
	ev.Detail = argsDetail(a.Tool, a.Args, a.ShowArgs)
	ev.Detail["approval_id"], ev.Detail["expires_at"] = a.ID, a.ExpiresAt
	if err := s.audit.Record(ctx, ev); err != nil {
		if _, derr := s.settle(context.WithoutCancel(ctx), a.ID, ApprovalDenied, "valet", "audit write failed"); derr != nil {
			s.log.ErrorContext(ctx, "denying an unaudited approval failed", "approval_id", a.ID, "err", derr)
		}
		return Approval{}, unavailable("the audit log", err)
	}
	s.log.InfoContext(ctx, "approval requested", "approval_id", a.ID, "task_id", task.ID, "tool", a.Tool, "expires_at", a.ExpiresAt)
	s.notifyApproval(ctx, a)
	return a, nil
}

func hashOf(args []byte) string { return argsDetail("", args, false)["args_hash"].(string) }

// notifyApproval posts the webhook in the background: bounded, logged,
// never blocking the answer. The body has ids and names, not argument
// values.
func (s *Service) notifyApproval(ctx context.Context, a Approval) {
	cfg := s.agent.approvals
	if cfg.WebhookURL == "" {
		return
	}
	d := argsDetail(a.Tool, a.Args, false)
	body, _ := json.Marshal(map[string]any{ // plain maps and strings
		"type": "approval.requested", "approval_id": a.ID, "task_id": a.TaskID, "tool": a.Tool,
		"args_hash": a.ArgsHash, "arg_names": d["arg_names"], "intent": a.Intent, "agent": a.Agent,
		"issuer": a.Issuer, "template": a.Template, "act": a.Act, "expires_at": a.ExpiresAt,
	})
	log, rid := s.log, RequestID(ctx)
	go func() {
		wctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(wctx, http.MethodPost, cfg.WebhookURL, bytes.NewReader(body))
		if err != nil {
			log.Error("approval webhook", "approval_id", a.ID, "request_id", rid, "err", err)
			return
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := cfg.WebhookClient.Do(req)
		if err != nil {
			log.Warn("approval webhook failed", "approval_id", a.ID, "request_id", rid, "err", err)
			return
		}
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			log.Warn("approval webhook refused", "approval_id", a.ID, "request_id", rid, "status", resp.StatusCode)
		}
	}()
}

// loadApproval reads an approval; a pending one past its timeout is moved
// to expired (and audited) on the way.
func (s *Service) loadApproval(ctx context.Context, id string) (Approval, error) {
	store, err := s.recordsStore()
	if err != nil {
		return Approval{}, err
	}
	lctx, cancel := context.WithTimeout(ctx, defaultLedgerTimeout)
	b, err := store.Get(lctx, "approval", id)
	cancel()
	switch {
	case errors.Is(err, ErrNotFound):
		return Approval{}, Errorf(CodeNotFound, "approval %q not found", id)
	case err != nil:
		return Approval{}, unavailable("the record store", err)
	}
	var a Approval
	if err := json.Unmarshal(b, &a); err != nil {
		return Approval{}, &Error{Code: CodeInternal, Message: "internal error", Err: fmt.Errorf("decoding approval %s: %w", id, err)}
	}
	if a.State == ApprovalPending && !s.now().Before(a.ExpiresAt) {
		return s.settle(ctx, id, ApprovalExpired, "valet", "nobody decided before the approval timeout")
	}
	return a, nil
}

// settle moves a pending approval to state, atomically, and audits who
// decided. A decision on an approval that is no longer pending is a 409
// carrying the approval as it is.
func (s *Service) settle(ctx context.Context, id string, state ApprovalState, who, reason string) (Approval, error) {
	return s.transition(ctx, id, ApprovalPending, func(a *Approval) {
		a.State, a.DecidedBy, a.DecidedAt, a.Reason = state, who, s.now(), reason
	}, "approval."+string(state), who)
}

// transition applies change to an approval in state from, with
// compare-and-swap, and audits it as event typ by actor.
func (s *Service) transition(ctx context.Context, id string, from ApprovalState, change func(*Approval), typ, actor string) (Approval, error) {
	store, err := s.recordsStore()
	if err != nil {
		return Approval{}, err
	}
	lctx, cancel := context.WithTimeout(ctx, defaultLedgerTimeout)
	defer cancel()
	old, err := store.Get(lctx, "approval", id)
	switch {
	case errors.Is(err, ErrNotFound):
		return Approval{}, Errorf(CodeNotFound, "approval %q not found", id)
	case err != nil:
		return Approval{}, unavailable("the record store", err)
	}
	var a Approval
	if err := json.Unmarshal(old, &a); err != nil {
		return Approval{}, &Error{Code: CodeInternal, Message: "internal error", Err: err}
	}
	if a.State != from {
		return a, &Error{Code: CodeConflict, Message: fmt.Sprintf("approval %s is %s", id, a.State), Err: ErrNotActive}
	}
	change(&a)
	next, _ := json.Marshal(a) // it was just decoded from JSON
	switch err := store.Swap(lctx, "approval", id, old, next); {
	case errors.Is(err, ErrNotActive):
		cur, lerr := s.loadApproval(ctx, id)
		if lerr != nil {
			return Approval{}, lerr
		}
		return cur, &Error{Code: CodeConflict, Message: fmt.Sprintf("approval %s is %s", id, cur.State), Err: err}
	case err != nil:
		return Approval{}, unavailable("the record store", err)
	}
	ev := s.event(ctx, typ, actor, Task{ID: a.TaskID, Issuer: a.Issuer, Template: a.Template})
	ev.Outcome, ev.Reason = string(a.State), a.Reason
	ev.Detail = argsDetail(a.Tool, a.Args, a.ShowArgs)
	ev.Detail["approval_id"] = a.ID
	if a.ActionJTI != "" {
		ev.Creds = []string{a.ActionJTI}
	}
	if err := s.audit.Record(ctx, ev); err != nil {
		// The decision stands in the store; its record is lost. An approval
		// is only granted to the agent after this, so log loudly.
		s.log.ErrorContext(ctx, "audit write of an approval decision failed", "approval_id", id, "state", a.State, "err", err)
		if a.State == ApprovalApproved || a.State == ApprovalIssued {
			return Approval{}, unavailable("the audit log", err)
		}
	}
	s.log.InfoContext(ctx, "approval "+string(a.State), "approval_id", id, "task_id", a.TaskID, "by", actor)
	return a, nil
}

// AuthorizeApprover checks an approver's client credentials and returns
// the name decisions are audited under.
func (s *Service) AuthorizeApprover(ctx context.Context, id, secret string) (string, error) {
	if id == "" {
		return "", unauthenticated(errors.New("no approver credentials"))
	}
	if wait := s.throttle.wait("approver:"+id, s.now()); wait > 0 {
		return "", throttled(wait)
	}
	who, err := s.agent.approvals.Authorize(ctx, id, secret)
	if err != nil {
		s.throttle.fail("approver:"+id, s.now())
		s.log.WarnContext(ctx, "approver authentication failed", "client_id", id)
		return "", unauthenticated(err)
	}
	s.throttle.succeed("approver:" + id)
	return who, nil
}

// PendingApprovals lists the approvals waiting for a decision, oldest
// first; ones past their timeout are moved to expired on the way.
func (s *Service) PendingApprovals(ctx context.Context) ([]Approval, error) {
	store, err := s.recordsStore()
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, defaultLedgerTimeout)
	recs, err := store.List(lctx, "approval", maxPendingList)
	cancel()
	if err != nil {
		return nil, unavailable("the record store", err)
	}
	out := []Approval{}
	now := s.now()
	for _, b := range recs {
		var a Approval
		if json.Unmarshal(b, &a) != nil || a.State != ApprovalPending {
			continue
		}
		if !now.Before(a.ExpiresAt) {
			if _, err := s.settle(ctx, a.ID, ApprovalExpired, "valet", "nobody decided before the approval timeout"); err != nil && ErrorCode(err) != CodeConflict {
				s.log.ErrorContext(ctx, "expiring an approval failed", "approval_id", a.ID, "err", err)
			}
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b Approval) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return out, nil
}

// DecideApproval records an approver's decision on a pending approval.
// Approving an approval whose task has ended is a 409.
func (s *Service) DecideApproval(ctx context.Context, who, id string, approve bool, reason string) (Approval, error) {
	a, err := s.loadApproval(ctx, id)
	if err != nil {
		return Approval{}, err
	}
	if a.State != ApprovalPending {
		return a, &Error{Code: CodeConflict, Message: fmt.Sprintf("approval %s is %s", id, a.State)}
	}
	state := ApprovalDenied
	if approve {
		state = ApprovalApproved
		lctx, cancel := context.WithTimeout(ctx, defaultLedgerTimeout)
		t, _, terr := s.ledger.Task(lctx, a.TaskID)
		cancel()
		switch {
		case terr != nil && !errors.Is(terr, ErrNotFound):
			return Approval{}, unavailable("the credential ledger", terr)
		case terr != nil || t.State != StateActive || !s.now().Before(t.Deadline):
			return a, &Error{Code: CodeConflict, Message: fmt.Sprintf("the task of approval %s has ended", id)}
		}
	}
	return s.settle(ctx, id, state, who, reason)
}

// ActionStatus is the agent's poll of an approval: pending (202), denied or
// expired (403, rule "approval"), or approved, in which case the action
// token is issued, recorded and handed out exactly once; a later poll is a
// 409.
func (s *Service) ActionStatus(ctx context.Context, raw, taskID, approvalID, proof, method, url string) (ActionResult, error) {
	c, task, err := s.taskCaller(ctx, raw, taskID, proof, method, url)
	if err != nil {
		return ActionResult{}, err
	}
	a, err := s.loadApproval(ctx, approvalID)
	if err != nil {
		return ActionResult{}, err
	}
	if a.TaskID != task.ID {
		return ActionResult{}, Errorf(CodeNotFound, "approval %q not found", approvalID)
	}
	switch a.State {
	case ApprovalPending:
		return ActionResult{Pending: &a, Tool: a.Tool, ArgsHash: a.ArgsHash}, nil
	case ApprovalDenied, ApprovalExpired:
		return ActionResult{}, &Error{Code: CodeForbidden, Rule: "approval",
			Message: fmt.Sprintf("approval %s was %s", a.ID, map[ApprovalState]string{ApprovalDenied: "denied", ApprovalExpired: "not given in time (denied)"}[a.State])}
	case ApprovalIssued:
		return ActionResult{}, &Error{Code: CodeConflict, Message: fmt.Sprintf("the action token of approval %s was already handed out", a.ID)}
	}
	tmpl, ok := s.templates.Load().Get(task.Template)
	if !ok {
		return ActionResult{}, &Error{Code: CodeForbidden, Rule: "template", Message: fmt.Sprintf("template %q is no longer available", task.Template)}
	}
	res, err := s.issueAction(ctx, task, c, tmpl, a.Tool, a.Args, a.ShowArgs, a.ID, "approval")
	if err != nil {
		return ActionResult{}, err
	}
	if _, err := s.transition(ctx, a.ID, ApprovalApproved, func(x *Approval) {
		x.State, x.ActionJTI = ApprovalIssued, res.JTI
	}, "approval.issued", task.Agent); err != nil {
		// Someone else claimed it first, or the store failed: this token
		// never leaves.
		s.burnAction(ctx, ActionClaims{ID: res.JTI, ExpiresAt: res.ExpiresAt})
		return ActionResult{}, err
	}
	return res, nil
}
