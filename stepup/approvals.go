package stepup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/requestid"
	"github.com/valet-dev/valet/policy"
)

// DefaultApprovalTimeout is how long an approval stays pending when the
// configuration sets no timeout.
const DefaultApprovalTimeout = 5 * time.Minute

// Default caps of pending approvals (ApprovalConfig.MaxPendingPerTask and
// MaxPendingPerAgent): one agent filing approvals cannot bury another's.
const (
	DefaultMaxPendingPerTask  = 8
	DefaultMaxPendingPerAgent = 32
)

// holdKind is the Records set kind of pending-approval places: ids
// "task/<task id>" and "agent/<issuer>/<agent>", members approval ids.
const holdKind = "approval-pending"

// ApprovalConfig configures the approval rule of sensitive tools.
type ApprovalConfig struct {
	// Clients may list, approve and deny (HTTP Basic). Only the SHA-256 of
	// each secret is kept.
	Clients []clientauth.Client
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
	// timeout. Redirects are never followed (a copy of the client is
	// used, with CheckRedirect set).
	WebhookClient *http.Client
	// MaxPendingPerTask and MaxPendingPerAgent cap the approvals pending at
	// once for one task and for one agent (issuer and subject); one more is
	// refused with 429. Zero means the default (8 and 32).
	MaxPendingPerTask, MaxPendingPerAgent int
}

// approvalSettings checks cfg and fills in its defaults.
func approvalSettings(cfg ApprovalConfig) (ApprovalConfig, error) {
	if cfg.Timeout < 0 {
		return cfg, errors.New("stepup: approval timeout must not be negative")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultApprovalTimeout
	}
	if cfg.MaxPendingPerTask < 0 || cfg.MaxPendingPerAgent < 0 {
		return cfg, errors.New("stepup: approval caps must not be negative")
	}
	if cfg.MaxPendingPerTask == 0 {
		cfg.MaxPendingPerTask = DefaultMaxPendingPerTask
	}
	if cfg.MaxPendingPerAgent == 0 {
		cfg.MaxPendingPerAgent = DefaultMaxPendingPerAgent
	}
	client := http.Client{Timeout: 3 * time.Second}
	if cfg.WebhookClient != nil {
		client = *cfg.WebhookClient
	}
	// A webhook answering with a redirect must not steer Valet's POST
	// elsewhere (the approval's ids and intent would follow it).
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	cfg.WebhookClient = &client
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
	return cfg, nil
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
	// RequiredBy is the monitor rule whose requirement was in force for
	// the agent when the approval was filed; approving it clears the
	// requirement.
	RequiredBy string `json:"required_by,omitempty"`
}

// fileApproval records a pending approval (until the task's deadline, so a
// poll after the timeout learns it was denied), audits it, and tells the
// webhook in the background.
func (s *Service) fileApproval(ctx context.Context, task broker.Task, c broker.TaskClaims, req ActionRequest, st *policy.SensitiveTool, resource map[string]any, requiredBy string) (Approval, error) {
	store, err := s.recordsStore()
	if err != nil {
		return Approval{}, err
	}
	now := s.now()
	exp := now.Add(s.approvals.Timeout)
	if task.Deadline.Before(exp) {
		exp = task.Deadline
	}
	a := Approval{ID: broker.NewID("apr"), State: ApprovalPending, TaskID: task.ID, Tool: req.Tool, Args: req.Args,
		ArgsHash: hashOf(req.Args), ShowArgs: st.ShowArgs, Intent: task.Intent, Agent: task.Agent, Issuer: task.Issuer,
		Template: task.Template, Subject: task.Subject, Act: task.Act, Resource: resource, Context: req.Context,
		CreatedAt: now, ExpiresAt: exp, Deadline: task.Deadline, RequiredBy: requiredBy}
	b, err := json.Marshal(a)
	if err != nil {
		return Approval{}, broker.InvalidField("context", "context cannot be stored: %v", err)
	}
	if err := s.holdApproval(ctx, store, a); err != nil {
		return Approval{}, err
	}
	lctx, cancel := broker.LedgerCtx(ctx)
	err = store.Put(lctx, "approval", a.ID, b, task.Deadline)
	cancel()
	if err != nil {
		s.releaseApproval(ctx, store, a)
		return Approval{}, broker.Unavailable("the record store", fmt.Errorf("recording approval %s: %w", a.ID, err))
	}
	ev := s.core.TaskEvent(ctx, "approval.requested", task.Agent, task)
	ev.Outcome = "pending"
	ev.Detail = argsDetail(a.Tool, a.Args, a.ShowArgs)
	ev.Detail["approval_id"], ev.Detail["expires_at"] = a.ID, a.ExpiresAt
	if requiredBy != "" {
		ev.Rule = "monitor " + requiredBy
		ev.Detail["required_by"] = requiredBy
	}
	if err := s.audit.Record(ctx, ev); err != nil {
		if _, derr := s.settle(context.WithoutCancel(ctx), a.ID, ApprovalDenied, "valet", "audit write failed"); derr != nil {
			s.log.ErrorContext(ctx, "denying an unaudited approval failed", "approval_id", a.ID, "err", derr)
		}
		return Approval{}, broker.Unavailable("the audit log", err)
	}
	s.log.InfoContext(ctx, "approval requested", "approval_id", a.ID, "task_id", task.ID, "tool", a.Tool, "expires_at", a.ExpiresAt)
	s.notifyApproval(ctx, a)
	return a, nil
}

// approvalHold is one capped set of pending approvals.
type approvalHold struct {
	id, what string
	max      int
}

// approvalHolds are the two capped sets a pending approval takes a place
// in: its task's and its agent's.
func (s *Service) approvalHolds(a Approval) []approvalHold {
	cfg := s.approvals
	return []approvalHold{
		{"task/" + a.TaskID, "task " + a.TaskID, cfg.MaxPendingPerTask},
		{"agent/" + a.Issuer + "/" + a.Agent, "agent " + a.Agent, cfg.MaxPendingPerAgent},
	}
}

// holdApproval takes a place for a in its task's and its agent's sets of
// pending approvals, or refuses with 429 naming the cap that is full.
func (s *Service) holdApproval(ctx context.Context, store broker.Records, a Approval) error {
	lctx, cancel := broker.LedgerCtx(ctx)
	defer cancel()
	holds := s.approvalHolds(a)
	for i, h := range holds {
		err := store.Hold(lctx, holdKind, h.id, a.ID, a.ExpiresAt, h.max)
		if err == nil {
			continue
		}
		s.release(ctx, store, a.ID, holds[:i])
		if errors.Is(err, broker.ErrExists) {
			return &broker.Error{Code: broker.CodeTooManyRequests, Rule: "approvals.max_pending", Err: err,
				Message: fmt.Sprintf("%s already has %d approvals pending; wait for a decision", h.what, h.max)}
		}
		return broker.Unavailable("the record store", err)
	}
	return nil
}

// releaseApproval frees a's places (best effort: a place not released
// frees itself when the approval expires).
func (s *Service) releaseApproval(ctx context.Context, store broker.Records, a Approval) {
	s.release(ctx, store, a.ID, s.approvalHolds(a))
}

func (s *Service) release(ctx context.Context, store broker.Records, id string, holds []approvalHold) {
	if len(holds) == 0 {
		return
	}
	lctx, cancel := broker.LedgerCtx(context.WithoutCancel(ctx))
	defer cancel()
	for _, h := range holds {
		if err := store.Release(lctx, holdKind, h.id, id); err != nil {
			s.log.WarnContext(ctx, "releasing a pending-approval place failed", "approval_id", id, "set", h.id, "err", err)
		}
	}
}

func hashOf(args []byte) string { return argsDetail("", args, false)["args_hash"].(string) }

// notifyApproval posts the webhook in the background: bounded, logged,
// never blocking the answer. The body has ids and names, not argument
// values.
func (s *Service) notifyApproval(ctx context.Context, a Approval) {
	cfg := s.approvals
	if cfg.WebhookURL == "" {
		return
	}
	d := argsDetail(a.Tool, a.Args, false)
	body, _ := json.Marshal(map[string]any{ // plain maps and strings
		"type": "approval.requested", "approval_id": a.ID, "task_id": a.TaskID, "tool": a.Tool,
		"args_hash": a.ArgsHash, "arg_names": d["arg_names"], "intent": a.Intent, "agent": a.Agent,
		"issuer": a.Issuer, "template": a.Template, "act": a.Act, "expires_at": a.ExpiresAt,
	})
	log, rid := s.log, requestid.From(ctx)
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
	lctx, cancel := broker.LedgerCtx(ctx)
	b, err := store.Get(lctx, "approval", id)
	cancel()
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return Approval{}, broker.Errorf(broker.CodeNotFound, "approval %q not found", id)
	case err != nil:
		return Approval{}, broker.Unavailable("the record store", err)
	}
	var a Approval
	if err := json.Unmarshal(b, &a); err != nil {
		return Approval{}, &broker.Error{Code: broker.CodeInternal, Message: "internal error", Err: fmt.Errorf("decoding approval %s: %w", id, err)}
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
	lctx, cancel := broker.LedgerCtx(ctx)
	defer cancel()
	old, err := store.Get(lctx, "approval", id)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return Approval{}, broker.Errorf(broker.CodeNotFound, "approval %q not found", id)
	case err != nil:
		return Approval{}, broker.Unavailable("the record store", err)
	}
	var a Approval
	if err := json.Unmarshal(old, &a); err != nil {
		return Approval{}, &broker.Error{Code: broker.CodeInternal, Message: "internal error", Err: err}
	}
	if a.State != from {
		return a, &broker.Error{Code: broker.CodeConflict, Message: fmt.Sprintf("approval %s is %s", id, a.State), Err: broker.ErrNotActive}
	}
	wasPending := a.State == ApprovalPending
	change(&a)
	next, _ := json.Marshal(a) // it was just decoded from JSON
	switch err := store.Swap(lctx, "approval", id, old, next); {
	case errors.Is(err, broker.ErrNotActive):
		cur, lerr := s.loadApproval(ctx, id)
		if lerr != nil {
			return Approval{}, lerr
		}
		return cur, &broker.Error{Code: broker.CodeConflict, Message: fmt.Sprintf("approval %s is %s", id, cur.State), Err: err}
	case err != nil:
		return Approval{}, broker.Unavailable("the record store", err)
	}
	if wasPending && a.State != ApprovalPending {
		s.releaseApproval(ctx, store, a)
	}
	ev := s.core.TaskEvent(ctx, typ, actor, broker.Task{ID: a.TaskID, Issuer: a.Issuer, Template: a.Template})
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
			return Approval{}, broker.Unavailable("the audit log", err)
		}
	}
	s.log.InfoContext(ctx, "approval "+string(a.State), "approval_id", id, "task_id", a.TaskID, "by", actor)
	return a, nil
}

// AuthorizeApprover checks an approver's client credentials and returns
// the name decisions are audited under.
func (s *Service) AuthorizeApprover(ctx context.Context, id, secret string) (string, error) {
	if id == "" {
		return "", broker.Unauthenticated(errors.New("no approver credentials"))
	}
	if wait := s.throttle.Wait("approver:"+id, s.now()); wait > 0 {
		return "", broker.Throttled(wait)
	}
	who, err := s.approvals.Authorize(ctx, id, secret)
	if err != nil {
		s.throttle.Fail("approver:"+id, s.now())
		s.log.WarnContext(ctx, "approver authentication failed", "client_id", id)
		return "", broker.Unauthenticated(err)
	}
	s.throttle.Succeed("approver:" + id)
	return who, nil
}

// Bounds of GET /v1/approvals.
const (
	// maxApprovalScan is how many approval records one listing reads
	// before it filters and pages them.
	maxApprovalScan = 5000
	// DefaultApprovalPage and MaxApprovalPage bound one page.
	DefaultApprovalPage = 100
	MaxApprovalPage     = 1000
)

// ApprovalQuery selects and pages approvals for an approver. Empty fields
// match everything; State defaults to pending.
type ApprovalQuery struct {
	State    ApprovalState
	Agent    string // the task's agent (Approval.Agent) or any actor of its chain
	Template string
	TaskID   string
	// Limit is the page size: 0 means DefaultApprovalPage, at most
	// MaxApprovalPage.
	Limit int
	// Cursor is the NextCursor of the previous page.
	Cursor string
}

// Validate refuses a query Valet cannot answer, naming the parameter.
func (q *ApprovalQuery) Validate() error {
	switch q.State {
	case "":
		q.State = ApprovalPending
	case ApprovalPending, ApprovalApproved, ApprovalDenied, ApprovalExpired, ApprovalIssued:
	default:
		return broker.InvalidField("state", "state must be pending, approved, denied, expired or issued")
	}
	for name, v := range map[string]string{"agent": q.Agent, "template": q.Template, "task_id": q.TaskID} {
		if len(v) > 256 {
			return broker.InvalidField(name, "%s must be at most 256 bytes", name)
		}
	}
	switch {
	case q.Limit == 0:
		q.Limit = DefaultApprovalPage
	case q.Limit < 0 || q.Limit > MaxApprovalPage:
		return broker.InvalidField("limit", "limit must be from 1 to %d", MaxApprovalPage)
	}
	if q.Cursor != "" {
		if _, _, err := decodeApprovalCursor(q.Cursor); err != nil {
			return broker.InvalidField("cursor", "cursor is not one Valet gave")
		}
	}
	return nil
}

func (q ApprovalQuery) match(a Approval) bool {
	return a.State == q.State && (q.Template == "" || a.Template == q.Template) && (q.TaskID == "" || a.TaskID == q.TaskID) &&
		(q.Agent == "" || a.Agent == q.Agent || slices.Contains(a.Act, q.Agent))
}

// The sort key of approvals: created_at, then id (both ascending). A cursor
// is the key of the last approval of a page.
func approvalKeyCompare(a Approval, at time.Time, id string) int {
	if c := a.CreatedAt.Compare(at); c != 0 {
		return c
	}
	return strings.Compare(a.ID, id)
}

func encodeApprovalCursor(a Approval) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(a.CreatedAt.UnixNano(), 10) + "/" + a.ID))
}

func decodeApprovalCursor(c string) (time.Time, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, "", err
	}
	ns, id, ok := strings.Cut(string(b), "/")
	n, err := strconv.ParseInt(ns, 10, 64)
	if !ok || err != nil || id == "" {
		return time.Time{}, "", errors.New("malformed cursor")
	}
	return time.Unix(0, n), id, nil
}

// ListApprovals lists the approvals q selects, sorted by created_at then
// id (oldest first), one page at a time: next is the cursor of the next
// page, "" on the last. Pending ones past their timeout are moved to
// expired on the way. It reads at most maxApprovalScan records.
func (s *Service) ListApprovals(ctx context.Context, q ApprovalQuery) (page []Approval, next string, err error) {
	if err := q.Validate(); err != nil {
		return nil, "", err
	}
	store, err := s.recordsStore()
	if err != nil {
		return nil, "", err
	}
	lctx, cancel := broker.LedgerCtx(ctx)
	recs, err := store.List(lctx, "approval", maxApprovalScan)
	cancel()
	if err != nil {
		return nil, "", broker.Unavailable("the record store", err)
	}
	var afterAt time.Time
	var afterID string
	if q.Cursor != "" {
		afterAt, afterID, _ = decodeApprovalCursor(q.Cursor) // checked by Validate
	}
	out := []Approval{}
	now := s.now()
	for _, b := range recs {
		var a Approval
		if json.Unmarshal(b, &a) != nil {
			continue
		}
		if a.State == ApprovalPending && !now.Before(a.ExpiresAt) {
			x, err := s.settle(ctx, a.ID, ApprovalExpired, "valet", "nobody decided before the approval timeout")
			if err != nil && broker.ErrorCode(err) != broker.CodeConflict {
				s.log.ErrorContext(ctx, "expiring an approval failed", "approval_id", a.ID, "err", err)
				continue
			}
			if err == nil {
				a = x
			}
		}
		if q.match(a) && (q.Cursor == "" || approvalKeyCompare(a, afterAt, afterID) > 0) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b Approval) int { return approvalKeyCompare(a, b.CreatedAt, b.ID) })
	if len(out) > q.Limit {
		out = out[:q.Limit]
		next = encodeApprovalCursor(out[len(out)-1])
	}
	return out, next, nil
}

// DecideApproval records an approver's decision on a pending approval.
// Approving an approval whose task has ended is a 409.
func (s *Service) DecideApproval(ctx context.Context, who, id string, approve bool, reason string) (Approval, error) {
	a, err := s.loadApproval(ctx, id)
	if err != nil {
		return Approval{}, err
	}
	if a.State != ApprovalPending {
		return a, &broker.Error{Code: broker.CodeConflict, Message: fmt.Sprintf("approval %s is %s", id, a.State)}
	}
	state := ApprovalDenied
	if approve {
		state = ApprovalApproved
		// The task must still pass the gate: an approval approved after a
		// freeze (or a revocation) issues nothing.
		_, terr := s.core.GateRecordedTask(ctx, a.TaskID)
		var ge *broker.Error
		switch {
		case terr == nil:
		case broker.ErrorCode(terr) == broker.CodeUnavailable || broker.ErrorCode(terr) == broker.CodeInternal:
			return Approval{}, terr
		case errors.As(terr, &ge) && ge.Code == broker.CodeForbidden:
			return a, &broker.Error{Code: broker.CodeConflict, Rule: ge.Rule, Err: terr,
				Message: fmt.Sprintf("the task of approval %s may no longer act: %s", id, ge.Message)}
		default:
			return a, &broker.Error{Code: broker.CodeConflict, Message: fmt.Sprintf("the task of approval %s has ended", id), Err: terr}
		}
	}
	d, err := s.settle(ctx, id, state, who, reason)
	if err == nil && approve && d.RequiredBy != "" {
		// The human looked at this agent: its monitor requirement ends.
		// If clearing fails, the next action asks again (fail closed).
		if cerr := s.ClearApprovalRequirement(ctx, who, d.Issuer, d.Agent, d.TaskID, "approved "+d.ID); cerr != nil {
			s.log.ErrorContext(ctx, "clearing the approval requirement failed; the agent's next sensitive action needs approval again", "approval_id", d.ID, "err", cerr)
		}
	}
	return d, err
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
		return ActionResult{}, broker.Errorf(broker.CodeNotFound, "approval %q not found", approvalID)
	}
	switch a.State {
	case ApprovalPending:
		return ActionResult{Pending: &a, Tool: a.Tool, ArgsHash: a.ArgsHash}, nil
	case ApprovalDenied, ApprovalExpired:
		return ActionResult{}, &broker.Error{Code: broker.CodeForbidden, Rule: "approval",
			Message: fmt.Sprintf("approval %s was %s", a.ID, map[ApprovalState]string{ApprovalDenied: "denied", ApprovalExpired: "not given in time (denied)"}[a.State])}
	case ApprovalIssued:
		return ActionResult{}, &broker.Error{Code: broker.CodeConflict, Message: fmt.Sprintf("the action token of approval %s was already handed out", a.ID)}
	}
	tmpl, ok := s.core.Templates().Get(task.Template)
	if !ok {
		return ActionResult{}, &broker.Error{Code: broker.CodeForbidden, Rule: "template", Message: fmt.Sprintf("template %q is no longer available", task.Template)}
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
