package stepup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/wire"
	"github.com/valet-dev/valet/canonical"
	"github.com/valet-dev/valet/policy"
)

// MaxActionTTL is the longest an action token lives.
const MaxActionTTL = 60 * time.Second

// ActionClaims are the claims of a one-shot action token: the right to call
// Tool once, with the arguments whose canonical hash is ArgsHash, for task
// TaskID, by the holder of the DPoP key JKT when the task is bound.
type ActionClaims struct {
	ID        string // jti
	TaskID    string
	Tool      string
	ArgsHash  string
	Subject   string
	Template  string
	Audience  []string
	JKT       string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// ActionTokens mints and verifies action tokens (JWT, typ "action+jwt").
// Implementations must be safe for concurrent use. Any error from
// VerifyAction means the token must be refused.
type ActionTokens interface {
	MintAction(c ActionClaims) (string, error)
	VerifyAction(raw string) (ActionClaims, error)
}

// ActionRequest is what an agent sends to POST /v1/tasks/{id}/actions.
type ActionRequest struct {
	TaskID string `json:"-"`
	Tool   string `json:"tool"`
	// Args are the call's arguments, a JSON object; Valet keeps their
	// canonical form (see package canonical).
	Args    json.RawMessage `json:"args"`
	Context map[string]any  `json:"context,omitempty"`
	// Proof, Method and URL are the request's DPoP header and what it must
	// name; set by the HTTP layer.
	Proof       string `json:"-"`
	Method, URL string `json:"-"`
}

// DecodeActionRequest reads and validates an action request body.
func DecodeActionRequest(r io.Reader) (ActionRequest, error) {
	var a ActionRequest
	if err := wire.DecodeJSON(r, &a); err != nil {
		return a, err
	}
	switch {
	case a.Tool == "":
		return a, broker.InvalidField("tool", "tool is required")
	case !policy.ValidToolName(a.Tool):
		return a, wire.CheckToolName("tool", a.Tool)
	}
	canon, err := canonical.Args(a.Args)
	if err != nil {
		return a, broker.InvalidField("args", "%s", err.Error())
	}
	a.Args = canon
	return a, nil
}

// ActionResult is the answer to an action request or an approval poll:
// either a token, or a pending approval.
type ActionResult struct {
	Token     string
	JTI       string
	Tool      string
	ArgsHash  string
	IssuedAt  time.Time
	ExpiresAt time.Time
	// Pending is set when a human must decide first (202).
	Pending *Approval
}

// actionRecord is what Valet keeps of an issued action token, until it
// expires: the token reaches no one unless this was written first.
type actionRecord struct {
	TaskID    string    `json:"task_id"`
	Tool      string    `json:"tool"`
	ArgsHash  string    `json:"args_hash"`
	ExpiresAt time.Time `json:"expires_at"`
}

// RequestAction decides one call of a sensitive tool. Under rule policy it
// answers an action token at once or 403 naming the rule; under rule
// approval it files an approval and answers it pending. The token is
// recorded and audited before it is returned.
func (s *Service) RequestAction(ctx context.Context, raw string, req ActionRequest) (ActionResult, error) {
	c, task, err := s.taskCaller(ctx, raw, req.TaskID, req.Proof, req.Method, req.URL)
	if err != nil {
		return ActionResult{}, err
	}
	tmpl, ok := s.core.Templates().Get(task.Template)
	if !ok {
		return ActionResult{}, s.actionDenied(ctx, task, req, nil, &broker.Error{Code: broker.CodeForbidden, Rule: "template",
			Message: fmt.Sprintf("template %q is no longer available", task.Template)})
	}
	st, ok := tmpl.SensitiveTool(req.Tool)
	if !ok {
		return ActionResult{}, s.actionDenied(ctx, task, req, nil, &broker.Error{Code: broker.CodeForbidden, Rule: "sensitive_tools", Field: "tool",
			Message: fmt.Sprintf("tool %q is not a sensitive tool of template %q", req.Tool, tmpl.Name)})
	}
	if !slices.Contains(c.ActionTools, req.Tool) {
		// Bounded by the task's own grant: a sensitive tool is declared
		// (or delegated) like any tool before action tokens are issued.
		return ActionResult{}, s.actionDenied(ctx, task, req, st, &broker.Error{Code: broker.CodeForbidden, Rule: "tools", Field: "tool",
			Message: fmt.Sprintf("tool %q is not granted to this task", req.Tool)})
	}
	resource, err := s.resourceOf(st)
	if err != nil {
		return ActionResult{}, s.actionDenied(ctx, task, req, st, err)
	}
	if st.Condition != nil {
		vars := s.actionVars(task, c, req, resource)
		if ok, cerr := st.Condition.Eval(vars); !ok {
			return ActionResult{}, s.actionDenied(ctx, task, req, st, &broker.Error{Code: broker.CodeForbidden, Rule: st.Condition.Name, Err: cerr,
				Message: fmt.Sprintf("denied by rule %q of template %q", st.Condition.Name, tmpl.Name)})
		}
	}
	// A monitor rule may require a human for this agent's sensitive
	// actions for a while, whatever the template says; an unreadable
	// requirement fails closed.
	requiredBy, err := s.ApprovalRequirement(ctx, task.Issuer, task.Agent)
	if err != nil {
		return ActionResult{}, err
	}
	if st.Rule == policy.RuleApproval || requiredBy != "" {
		a, err := s.fileApproval(ctx, task, c, req, st, resource, requiredBy)
		if err != nil {
			return ActionResult{}, err
		}
		return ActionResult{Pending: &a, Tool: a.Tool, ArgsHash: a.ArgsHash}, nil
	}
	return s.issueAction(ctx, task, c, tmpl, req.Tool, req.Args, st.ShowArgs, "", "policy")
}

// issueAction spends the actions budget, mints an action token, records it
// and audits it, in that order; it returns nothing unless all succeeded.
func (s *Service) issueAction(ctx context.Context, task broker.Task, c broker.TaskClaims, tmpl *policy.Template, tool string, args []byte, showArgs bool, approvalID, how string) (ActionResult, error) {
	store, err := s.recordsStore()
	if err != nil {
		return ActionResult{}, err
	}
	at, err := s.actionTokens()
	if err != nil {
		return ActionResult{}, err
	}
	now := s.now()
	exp := now.Add(s.actionTTL)
	if task.Deadline.Before(exp) {
		exp = task.Deadline
	}
	if c.ExpiresAt.Before(exp) {
		exp = c.ExpiresAt
	}
	exp = exp.Truncate(time.Second)
	if exp.Sub(now) < time.Second {
		return ActionResult{}, &broker.Error{Code: broker.CodeForbidden, Rule: "ttl", Message: "the task has less than a second left"}
	}
	if err := s.core.Spend(ctx, "actions", task.ID, tmpl.Budgets.Actions, task.Deadline); err != nil {
		req := ActionRequest{Tool: tool, Args: args}
		return ActionResult{}, s.actionDenied(ctx, task, req, &policy.SensitiveTool{ShowArgs: showArgs}, err)
	}
	hash := canonical.Hash(args)
	ac := ActionClaims{ID: broker.NewID("act"), TaskID: task.ID, Tool: tool, ArgsHash: hash, Subject: c.Subject,
		Template: task.Template, Audience: c.Audience, JKT: task.JKT, IssuedAt: now, ExpiresAt: exp}
	tok, err := at.MintAction(ac)
	if err != nil {
		return ActionResult{}, &broker.Error{Code: broker.CodeInternal, Message: "issuing the action token failed; nothing was issued", Err: err}
	}
	rec, _ := json.Marshal(actionRecord{TaskID: task.ID, Tool: tool, ArgsHash: hash, ExpiresAt: exp}) // plain struct
	lctx, cancel := broker.LedgerCtx(ctx)
	err = store.Put(lctx, "action", ac.ID, rec, exp)
	cancel()
	if err != nil {
		return ActionResult{}, broker.Unavailable("the record store", fmt.Errorf("recording action token %s: %w", ac.ID, err))
	}
	ev := s.core.TaskEvent(ctx, "action.granted", task.Agent, task)
	ev.Outcome, ev.Rule, ev.Creds = "granted", how, []string{ac.ID}
	ev.Detail = argsDetail(tool, args, showArgs)
	ev.Detail["expires_at"] = exp
	if approvalID != "" {
		ev.Detail["approval_id"] = approvalID
	}
	if err := s.audit.Record(ctx, ev); err != nil {
		s.burnAction(ctx, ac)
		return ActionResult{}, broker.Unavailable("the audit log", err)
	}
	s.log.InfoContext(ctx, "action token issued", "task_id", task.ID, "tool", tool, "jti", ac.ID, "args_hash", hash, "expires_at", exp)
	return ActionResult{Token: tok, JTI: ac.ID, Tool: tool, ArgsHash: hash, IssuedAt: now, ExpiresAt: exp}, nil
}

// burnAction marks an action token used, so a token that was minted but
// not handed out (or not audited) can never be consumed.
func (s *Service) burnAction(ctx context.Context, ac ActionClaims) {
	if s.limiter == nil {
		return
	}
	lctx, cancel := broker.LedgerCtx(context.WithoutCancel(ctx))
	defer cancel()
	if _, err := s.limiter.Once(lctx, "action:"+ac.ID, ac.ExpiresAt.Add(time.Second)); err != nil {
		s.log.ErrorContext(ctx, "burning an action token failed; its record is kept until it expires", "jti", ac.ID, "err", err)
	}
}

// argsDetail is what audit records say about arguments: their names and
// hash, and their values only when the template marks them safe to show.
func argsDetail(tool string, args []byte, show bool) map[string]any {
	d := map[string]any{"tool": tool, "args_hash": canonical.Hash(args), "arg_names": canonical.Names(args)}
	if show {
		d["args"] = string(args)
	}
	return d
}

// actionDenied logs and audits a refused action request and returns err.
func (s *Service) actionDenied(ctx context.Context, task broker.Task, req ActionRequest, st *policy.SensitiveTool, err error) error {
	var e *broker.Error
	rule := ""
	if errors.As(err, &e) {
		rule = e.Rule
	}
	s.log.WarnContext(ctx, "action denied", "task_id", task.ID, "tool", req.Tool, "rule", rule, "reason", err.Error())
	ev := s.core.TaskEvent(ctx, "action.denied", task.Agent, task)
	ev.Outcome, ev.Rule, ev.Reason = "denied", rule, err.Error()
	ev.Detail = argsDetail(req.Tool, req.Args, st != nil && st.ShowArgs)
	if aerr := s.audit.Record(ctx, ev); aerr != nil {
		s.log.ErrorContext(ctx, "audit write of a denial failed", "err", aerr)
	}
	return err
}

// ActionUse is the answer to a consumption: whether this call consumed the
// token, and what it allows.
type ActionUse struct {
	Consumed bool
	Claims   ActionClaims
}

// ConsumeAction uses up an action token for a tool server (caller names
// it): the token must verify, be on record, match its record, its task
// must be active, and it must never have been consumed. Only the first
// call with a given token gets Consumed; an unusable token is simply not
// consumed. A store that cannot be reached is an error (503).
func (s *Service) ConsumeAction(ctx context.Context, caller, raw string) (ActionUse, error) {
	at, err := s.actionTokens()
	if err != nil {
		return ActionUse{}, err
	}
	store, err := s.recordsStore()
	if err != nil {
		return ActionUse{}, err
	}
	if s.limiter == nil {
		return ActionUse{}, broker.Unavailable("the replay store", errNoLimiter)
	}
	ac, err := at.VerifyAction(raw)
	if err != nil {
		s.log.WarnContext(ctx, "action token rejected", "token_sha256", broker.TokenHash(raw), "reason", err.Error())
		return ActionUse{}, nil
	}
	lctx, cancel := broker.LedgerCtx(ctx)
	defer cancel()
	b, err := store.Get(lctx, "action", ac.ID)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return ActionUse{}, nil
	case err != nil:
		return ActionUse{}, broker.Unavailable("the record store", err)
	}
	var rec actionRecord
	if json.Unmarshal(b, &rec) != nil || rec.TaskID != ac.TaskID || rec.Tool != ac.Tool || rec.ArgsHash != ac.ArgsHash {
		s.log.ErrorContext(ctx, "action token does not match its record", "jti", ac.ID)
		return ActionUse{}, nil
	}
	t, err := s.core.GateRecordedTask(lctx, ac.TaskID)
	switch code := broker.ErrorCode(err); {
	case err == nil:
	case code == broker.CodeUnavailable || code == broker.CodeInternal:
		return ActionUse{}, err
	default:
		s.log.WarnContext(ctx, "action token refused by the gate", "jti", ac.ID, "task_id", ac.TaskID, "caller", caller, "reason", err.Error())
		return ActionUse{}, nil
	}
	first, err := s.limiter.Once(lctx, "action:"+ac.ID, ac.ExpiresAt.Add(time.Second))
	switch {
	case err != nil:
		return ActionUse{}, broker.Unavailable("the replay store", err)
	case !first:
		s.log.WarnContext(ctx, "action token replayed", "jti", ac.ID, "task_id", ac.TaskID, "caller", caller)
		ev := s.core.TaskEvent(ctx, "action.replayed", caller, t)
		ev.Outcome, ev.Creds = "denied", []string{ac.ID}
		ev.Detail = map[string]any{"tool": ac.Tool, "args_hash": ac.ArgsHash}
		if aerr := s.audit.Record(ctx, ev); aerr != nil {
			s.log.ErrorContext(ctx, "audit write of a replay failed", "err", aerr)
		}
		return ActionUse{}, nil
	}
	ev := s.core.TaskEvent(ctx, "action.consumed", caller, t)
	ev.Outcome, ev.Creds = "consumed", []string{ac.ID}
	ev.Detail = map[string]any{"tool": ac.Tool, "args_hash": ac.ArgsHash}
	if err := s.audit.Record(ctx, ev); err != nil {
		return ActionUse{}, broker.Unavailable("the audit log", err) // the token is burnt: fail closed
	}
	return ActionUse{Consumed: true, Claims: ac}, nil
}
