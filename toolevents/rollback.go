package toolevents

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/printable"
)

// RollbackConfig says which undo webhooks a rollback may call.
type RollbackConfig struct {
	// AllowedHosts are the hosts (host or host:port, compared lower-case)
	// whose undo webhooks Valet calls. Empty: none is called.
	AllowedHosts []string
	// Client calls the webhooks; default a client that follows no
	// redirects. Each call is bounded by Timeout.
	Client *http.Client
	// Timeout bounds one undo call; default (and at most) 5 s.
	Timeout time.Duration
}

const maxUndoTimeout = 5 * time.Second

func (c *RollbackConfig) init() {
	if c.Timeout <= 0 || c.Timeout > maxUndoTimeout {
		c.Timeout = maxUndoTimeout
	}
	if c.Client == nil {
		c.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	hosts := make([]string, 0, len(c.AllowedHosts))
	for _, h := range c.AllowedHosts {
		hosts = append(hosts, strings.ToLower(strings.TrimSpace(h)))
	}
	c.AllowedHosts = hosts
}

func (c *RollbackConfig) allowed(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return false
	}
	return slices.Contains(c.AllowedHosts, strings.ToLower(u.Host)) || slices.Contains(c.AllowedHosts, strings.ToLower(u.Hostname()))
}

// RollbackStep is one undo of a rollback plan. It says who chose the undo
// (Reporter, ReportedWith) and whether that principal has since been
// revoked, so a responder can judge a step before running it.
type RollbackStep struct {
	EventID    string    `json:"event_id"`
	Tool       string    `json:"tool"`
	SideEffect string    `json:"side_effect,omitempty"`
	ReportedAt time.Time `json:"reported_at"`
	Late       bool      `json:"late"`
	// Agent held the task token; Reporter authenticated the report
	// ("client:<id>" for a tool server, else the agent); ReportedWith is
	// ReportedWithTaskToken or ReportedWithClient.
	Agent        string `json:"agent"`
	Reporter     string `json:"reporter"`
	ReportedWith string `json:"reported_with"`
	// ReporterRevoked: the principal that reported the step has since been
	// revoked (its task revoked or its token denied; for a client, no
	// longer configured), with why in RevokedReason.
	ReporterRevoked bool         `json:"reporter_revoked"`
	RevokedReason   string       `json:"reporter_revoked_reason,omitempty"`
	Undo            UndoPlanView `json:"undo"`
	// Allowed: the webhook's host is in rollback.allowed_hosts.
	Allowed bool `json:"allowed"`
	// State: "pending" (not run), "done", "failed" or "running".
	State  string `json:"state"`
	Status int    `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
}

// stepRecord is what Valet keeps of a step run (broker.Records kind "rollback",
// id <task>/<event>), so an undo that succeeded is never called twice.
type stepRecord struct {
	State  string    `json:"state"`
	Status int       `json:"status,omitempty"`
	Error  string    `json:"error,omitempty"`
	At     time.Time `json:"at"`
	By     string    `json:"by"`
}

// UndoPlanView is an Undo as a rollback plan shows it to a responder: the
// listing's view plus the body's size, media type and a bounded preview
// with secret-named fields redacted and control characters escaped.
type UndoPlanView struct {
	UndoView
	ContentType string `json:"content_type,omitempty"`
	BodyBytes   int    `json:"body_bytes,omitempty"`
	BodyPreview string `json:"body_preview,omitempty"`
}

func (u *Undo) planView() UndoPlanView {
	v := UndoPlanView{UndoView: u.view(), BodyBytes: len(u.Body)}
	if u.Body != "" {
		v.ContentType = printable.Truncate(u.ContentType, 128)
		v.BodyPreview = bodyPreview(u.Body, u.ContentType)
	}
	return v
}

// secretName matches field names whose values a preview never shows.
var secretName = regexp.MustCompile(`(?i)key|token|secret|passw|auth|cred|sign|sig$|cookie|session|otp|nonce|private`)

const redacted = "[redacted]"

// bodyPreview shows an undo body safely: a JSON or form body with the
// values of secret-named fields replaced, anything else as text; escaped
// and cut to maxBodyPreview runes.
func bodyPreview(body, contentType string) string {
	var v any
	dec := json.NewDecoder(strings.NewReader(body))
	dec.UseNumber() // numbers shown as sent
	if dec.Decode(&v) == nil && !dec.More() {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if enc.Encode(redactJSON(v)) == nil {
			return printable.Truncate(strings.TrimSuffix(b.String(), "\n"), maxBodyPreview)
		}
	}
	if strings.HasPrefix(strings.ToLower(strings.TrimSpace(contentType)), "application/x-www-form-urlencoded") {
		if q, err := url.ParseQuery(body); err == nil {
			for k := range q {
				if secretName.MatchString(k) {
					q[k] = []string{redacted}
				}
			}
			return printable.Truncate(q.Encode(), maxBodyPreview)
		}
	}
	return printable.Truncate(secretAssignment.ReplaceAllString(body, "${1}"+redacted), maxBodyPreview)
}

// secretAssignment matches `name=value`, `name: value` and `"name":"value"`
// in a body that is neither JSON nor a form, where name looks secret.
var secretAssignment = regexp.MustCompile(`(?i)([\w.-]*(?:key|token|secret|passw|auth|cred|sign|sig|cookie|session|otp|nonce|private)[\w.-]*"?\s*[:=]\s*"?)(?:(?:bearer|basic|dpop)\s+)?[^"&\s,;}<]+`)

func redactJSON(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if secretName.MatchString(k) {
				x[k] = redacted
			} else {
				x[k] = redactJSON(val)
			}
		}
	case []any:
		for i := range x {
			x[i] = redactJSON(x[i])
		}
	}
	return v
}

// reporterRevoked says whether the principal that reported e has been
// revoked since: for a task token, its task revoked or the token denied;
// for a tool server, its client no longer configured. An answer Valet
// cannot know (records gone) counts as revoked.
func (s *Service) reporterRevoked(ctx context.Context, t *broker.Task, e ToolEvent) (bool, string, error) {
	if e.reportedWith() == ReportedWithClient {
		id := strings.TrimPrefix(e.Reporter, "client:")
		if !slices.Contains(s.clients, id) {
			return true, "client " + id + " is no longer configured", nil
		}
		return false, "", nil
	}
	switch {
	case t == nil:
		return true, "the task's records are gone", nil
	case t.State == broker.StateRevoked:
		return true, "task " + t.ID + " was revoked", nil
	}
	_, denied, err := s.ledger.Credential(ctx, e.JTI)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return true, "token " + e.JTI + " is not on record", nil
	case err != nil:
		return false, "", broker.Unavailable("the credential ledger", err)
	case denied && t.State == broker.StateActive:
		return true, "token " + e.JTI + " was revoked", nil
	}
	return false, "", nil
}

// rollbackStep is the plan's view of event e, which has an undo.
func (s *Service) rollbackStep(ctx context.Context, t *broker.Task, e ToolEvent) (RollbackStep, error) {
	revoked, why, err := s.reporterRevoked(ctx, t, e)
	if err != nil {
		return RollbackStep{}, err
	}
	return RollbackStep{EventID: e.ID, Tool: e.Tool, SideEffect: e.SideEffect, ReportedAt: e.ReportedAt, Late: e.Late,
		Agent: e.Agent, Reporter: e.Reporter, ReportedWith: e.reportedWith(), ReporterRevoked: revoked, RevokedReason: why,
		Undo: e.Undo.planView(), Allowed: s.rollback.allowed(e.Undo.URL), State: "pending"}, nil
}

// rollbackTask reads the task of a rollback: nil when its records are gone
// but its events remain.
func (s *Service) rollbackTask(ctx context.Context, taskID string, haveEvents bool) (*broker.Task, error) {
	t, _, err := s.taskDetail(ctx, taskID)
	switch {
	case err == nil:
		return &t, nil
	case broker.ErrorCode(err) == broker.CodeNotFound && haveEvents:
		return nil, nil
	}
	return nil, err
}

// taskDetail reads a task's record: 404 when it is gone.
func (s *Service) taskDetail(ctx context.Context, id string) (broker.Task, []broker.Credential, error) {
	t, cs, err := s.ledger.Task(ctx, id)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return broker.Task{}, nil, broker.Errorf(broker.CodeNotFound, "task %q not found", id)
	case err != nil:
		return broker.Task{}, nil, broker.Unavailable("the credential ledger", err)
	}
	return t, cs, nil
}

// RollbackPlan lists the undo steps of a task's events, newest first (the
// order to run them in), with what has been run already.
func (s *Service) RollbackPlan(ctx context.Context, taskID string) ([]RollbackStep, error) {
	evs, err := s.events(ctx, taskID)
	if err != nil {
		return nil, err
	}
	t, err := s.rollbackTask(ctx, taskID, len(evs) > 0)
	if err != nil {
		return nil, err
	}
	store, err := s.recordStore()
	if err != nil {
		return nil, err
	}
	steps := []RollbackStep{}
	for i := len(evs) - 1; i >= 0; i-- {
		e := evs[i]
		if e.Undo == nil {
			continue
		}
		st, err := s.rollbackStep(ctx, t, e)
		if err != nil {
			return nil, err
		}
		b, err := store.Get(ctx, "rollback", taskID+"/"+e.ID)
		switch {
		case errors.Is(err, broker.ErrNotFound):
		case err != nil:
			return nil, broker.Unavailable("the record store", err)
		default:
			var r stepRecord
			if json.Unmarshal(b, &r) == nil {
				st.State, st.Status, st.Error = r.State, r.Status, r.Error
			}
		}
		steps = append(steps, st)
	}
	return steps, nil
}

// RollbackRun calls the undo webhook of one event of a task, once: a step
// already done is 409; a step running elsewhere is 409; a failed one may be
// run again. The call is audited (`rollback.step`) before and after it is
// made; its host must be allowed (403, rule rollback.allowed_hosts). A
// step whose reporter has been revoked since runs only when the responder
// confirms it (confirmRevoked; else 409, rule rollback.confirm). actor is
// the admin who runs it, as the audit trail names them; the caller has
// authorized them.
func (s *Service) RollbackRun(ctx context.Context, actor string, taskID, eventID string, confirmRevoked bool) (RollbackStep, error) {
	evs, err := s.events(ctx, taskID)
	if err != nil {
		return RollbackStep{}, err
	}
	i := slices.IndexFunc(evs, func(e ToolEvent) bool { return e.ID == eventID })
	if i < 0 || evs[i].Undo == nil {
		return RollbackStep{}, broker.Errorf(broker.CodeNotFound, "task %q has no event %q with an undo", taskID, eventID)
	}
	e := evs[i]
	t, _, err := s.taskDetail(ctx, taskID)
	if err != nil {
		return RollbackStep{}, err
	}
	step, err := s.rollbackStep(ctx, &t, e)
	if err != nil {
		return RollbackStep{}, err
	}
	step.State = ""
	if step.ReporterRevoked && !confirmRevoked {
		return RollbackStep{}, &broker.Error{Code: broker.CodeConflict, Rule: "rollback.confirm",
			Message: fmt.Sprintf("event %s was reported by a principal revoked since (%s): confirm with confirm=revoked_reporter", e.ID, step.RevokedReason)}
	}
	audit := func(outcome string, detail map[string]any) error {
		ev := s.core.TaskEvent(ctx, "rollback.step", actor, t)
		ev.Outcome = outcome
		ev.Detail = map[string]any{"event_id": e.ID, "tool": e.Tool, "method": e.Undo.Method, "url": e.Undo.auditURL(),
			"reporter": e.Reporter, "reported_with": step.ReportedWith, "reporter_revoked": step.ReporterRevoked}
		for k, v := range detail {
			ev.Detail[k] = v
		}
		return s.audit.Record(ctx, ev)
	}
	if !step.Allowed {
		if err := audit("denied", map[string]any{"rule": "rollback.allowed_hosts"}); err != nil {
			s.log.ErrorContext(ctx, "audit write of a denied rollback step failed", "err", err)
		}
		return RollbackStep{}, &broker.Error{Code: broker.CodeForbidden, Rule: "rollback.allowed_hosts",
			Message: fmt.Sprintf("the undo webhook's host is not in rollback.allowed_hosts (event %s)", e.ID)}
	}
	store, err := s.recordStore()
	if err != nil {
		return RollbackStep{}, err
	}
	key := taskID + "/" + eventID
	until := t.Deadline.Add(s.retention)
	if !until.After(s.now()) {
		until = s.now().Add(time.Hour)
	}
	running, _ := json.Marshal(stepRecord{State: "running", At: s.now().UTC(), By: actor})
	if err := s.claimStep(ctx, store, key, running, until); err != nil {
		return RollbackStep{}, err
	}
	if err := audit("started", nil); err != nil {
		s.finishStep(ctx, store, key, running, stepRecord{State: "failed", Error: "audit write failed", At: s.now().UTC(), By: actor})
		return RollbackStep{}, broker.Unavailable("the audit log", err)
	}
	status, callErr := s.callUndo(ctx, *e.Undo)
	rec := stepRecord{State: "done", Status: status, At: s.now().UTC(), By: actor}
	if callErr != nil {
		rec.State, rec.Error = "failed", callErr.Error()
	}
	s.finishStep(ctx, store, key, running, rec)
	step.State, step.Status, step.Error = rec.State, rec.Status, rec.Error
	detail := map[string]any{"status": status}
	if callErr != nil {
		detail["error"] = callErr.Error()
	}
	if err := audit(map[bool]string{true: "ok", false: "failed"}[callErr == nil], detail); err != nil {
		return step, broker.Unavailable("the audit log", err)
	}
	s.log.InfoContext(ctx, "rollback step", "task_id", taskID, "event_id", eventID, "state", rec.State, "status", status, "by", actor)
	return step, nil
}

// claimStep marks a step running, unless it is done or running (a running
// claim older than twice the timeout is taken over: its broker died).
func (s *Service) claimStep(ctx context.Context, store broker.Records, key string, running []byte, until time.Time) error {
	err := store.Put(ctx, "rollback", key, running, until)
	if err == nil {
		return nil
	}
	if !errors.Is(err, broker.ErrExists) {
		return broker.Unavailable("the record store", err)
	}
	old, err := store.Get(ctx, "rollback", key)
	if err != nil {
		return broker.Unavailable("the record store", err)
	}
	var r stepRecord
	_ = json.Unmarshal(old, &r)
	switch {
	case r.State == "done":
		return &broker.Error{Code: broker.CodeConflict, Message: "this undo step has already run successfully"}
	case r.State == "running" && s.now().Sub(r.At) < 2*s.rollback.Timeout:
		return &broker.Error{Code: broker.CodeConflict, Message: "this undo step is running"}
	}
	if err := store.Swap(ctx, "rollback", key, old, running); err != nil {
		if errors.Is(err, broker.ErrNotActive) {
			return &broker.Error{Code: broker.CodeConflict, Message: "this undo step is running"}
		}
		return broker.Unavailable("the record store", err)
	}
	return nil
}

func (s *Service) finishStep(ctx context.Context, store broker.Records, key string, running []byte, rec stepRecord) {
	b, _ := json.Marshal(rec)
	if err := store.Swap(context.WithoutCancel(ctx), "rollback", key, running, b); err != nil {
		s.log.ErrorContext(ctx, "recording a rollback step failed", "step", key, "err", err)
	}
}

// callUndo calls one webhook within the timeout: a 2xx answer is success.
func (s *Service) callUndo(ctx context.Context, u Undo) (int, error) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.rollback.Timeout)
	defer cancel()
	var body io.Reader
	if u.Body != "" {
		body = bytes.NewReader([]byte(u.Body))
	}
	req, err := http.NewRequestWithContext(cctx, u.Method, u.URL, body)
	if err != nil {
		return 0, fmt.Errorf("building the undo request: %w", err)
	}
	if u.Body != "" {
		ct := u.ContentType
		if ct == "" {
			ct = "application/json"
		}
		req.Header.Set("Content-Type", ct)
	}
	req.Header.Set("User-Agent", "valet-rollback")
	resp, err := s.rollback.Client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error names the URL, whose query may hold a key
		}
		return 0, fmt.Errorf("calling the undo webhook: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("the undo webhook answered %d", resp.StatusCode)
	}
	return resp.StatusCode, nil
}
