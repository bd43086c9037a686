package toolevents

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/wire"
)

// Tool-call events: what a tool server reports that an agent actually did,
// kept beside the task (Records list "events"/<task id>) for as long as the
// task's records, shown in the admin timeline as audit events
// `tool.called`, and walked backwards by a rollback (rollback.go).

const (
	// maxEvents is the most events kept per task; a report beyond it is 409.
	maxEvents = 1000
	// maxUndoBody caps an undo webhook's body.
	maxUndoBody = 8 << 10
	// maxSideEffect caps the side-effect text.
	maxSideEffect = 1024
	// maxBodyPreview caps the undo body preview a rollback plan shows, in
	// runes after escaping.
	maxBodyPreview = 256
)

// How a report was authenticated (ToolEvent.ReportedWith).
const (
	// ReportedWithTaskToken: the task token alone (the agent, or whoever
	// holds its token).
	ReportedWithTaskToken = "task_token"
	// ReportedWithClient: a tool server's client credentials
	// (Valet-Client-Authorization) beside the task token.
	ReportedWithClient = "client"
)

// Undo is how a tool server says a call can be undone: a webhook Valet
// calls on rollback. Body is kept verbatim (it may hold a secret, such as
// a one-time undo key) and is never audited, logged or listed: only its
// SHA-256 prefix is.
type Undo struct {
	URL         string `json:"url"`
	Method      string `json:"method"`
	Body        string `json:"body,omitempty"`
	ContentType string `json:"content_type,omitempty"`
}

// EventReport is the body of POST /v1/tasks/{id}/events.
type EventReport struct {
	Tool       string `json:"tool"`
	Outcome    string `json:"outcome"` // ok | error | refused
	Status     int    `json:"status,omitempty"`
	SideEffect string `json:"side_effect,omitempty"`
	Undo       *Undo  `json:"undo,omitempty"`
}

// ReportAuth is how the report was authenticated, beside the task token:
// set by the HTTP layer.
type ReportAuth struct {
	TaskID string
	// Proof, Method and URL: the request's DPoP header and what it names.
	Proof, Method, URL string
	// ClientID and ClientSecret, when sent (header
	// Valet-Client-Authorization), authenticate the tool server that
	// reports. A DPoP-bound token without a proof needs them.
	ClientID, ClientSecret string
}

// ToolEvent is one stored tool-call event.
type ToolEvent struct {
	ID         string    `json:"id"`
	TaskID     string    `json:"task_id"`
	Tool       string    `json:"tool"`
	Outcome    string    `json:"outcome"`
	Status     int       `json:"status,omitempty"`
	SideEffect string    `json:"side_effect,omitempty"`
	Undo       *Undo     `json:"undo,omitempty"`
	Agent      string    `json:"agent"`
	Reporter   string    `json:"reporter"`
	JTI        string    `json:"jti"`
	ReportedAt time.Time `json:"reported_at"`
	// ReportedWith says what authenticated the report: ReportedWithTaskToken
	// or ReportedWithClient.
	ReportedWith string `json:"reported_with,omitempty"`
	// Late is set when the report came after the task ended or its token
	// stopped being live (only a tool server's client may report then).
	Late bool `json:"late,omitempty"`
}

// reportedWith is ReportedWith, derived from Reporter for events stored
// before it was recorded.
func (e ToolEvent) reportedWith() string {
	switch {
	case e.ReportedWith != "":
		return e.ReportedWith
	case strings.HasPrefix(e.Reporter, "client:"):
		return ReportedWithClient
	}
	return ReportedWithTaskToken
}

// UndoView is what listings show of an Undo: the URL without its query
// (as the audit trail has it), never its body.
type UndoView struct {
	URL    string `json:"url"`
	Method string `json:"method"`
	// QueryRemoved: the URL had a query (or fragment), left out here.
	QueryRemoved bool   `json:"query_removed,omitempty"`
	BodySHA256   string `json:"body_sha256,omitempty"`
}

// View is the event as listed: the undo body replaced by its hash.
func (e ToolEvent) View() map[string]any {
	m := map[string]any{"id": e.ID, "task_id": e.TaskID, "tool": e.Tool, "outcome": e.Outcome, "agent": e.Agent,
		"reporter": e.Reporter, "reported_with": e.reportedWith(), "jti": e.JTI,
		"reported_at": e.ReportedAt.UTC().Format(time.RFC3339Nano), "late": e.Late}
	if e.Status != 0 {
		m["status"] = e.Status
	}
	if e.SideEffect != "" {
		m["side_effect"] = e.SideEffect
	}
	if e.Undo != nil {
		m["undo"] = e.Undo.view()
	}
	return m
}

func (u *Undo) view() UndoView {
	v := UndoView{URL: u.auditURL(), Method: u.Method}
	if p, err := url.Parse(u.URL); err == nil {
		v.QueryRemoved = p.RawQuery != "" || p.ForceQuery || p.Fragment != ""
	}
	if u.Body != "" {
		v.BodySHA256 = shaPrefix(u.Body)
	}
	return v
}

// auditURL is the URL without its query, which may carry a key.
func (u *Undo) auditURL() string {
	p, err := url.Parse(u.URL)
	if err != nil {
		return ""
	}
	p.RawQuery, p.Fragment, p.User = "", "", nil
	return p.String()
}

func shaPrefix(s string) string {
	sum := sha256.Sum256([]byte(s))
	return fmt.Sprintf("%x", sum[:6])
}

// DecodeEventReport reads and validates a report body.
func DecodeEventReport(r io.Reader) (EventReport, error) {
	var e EventReport
	if err := wire.DecodeJSON(io.LimitReader(r, 64<<10), &e); err != nil {
		return e, err
	}
	return e, e.validate()
}

func (e EventReport) validate() error {
	if e.Tool == "" {
		return broker.InvalidField("tool", "tool is required")
	}
	if err := wire.CheckToolName("tool", e.Tool); err != nil {
		return err
	}
	switch {
	case e.Outcome != "ok" && e.Outcome != "error" && e.Outcome != "refused":
		return broker.InvalidField("outcome", "outcome must be ok, error or refused")
	case e.Status != 0 && (e.Status < 100 || e.Status > 599):
		return broker.InvalidField("status", "status must be an HTTP status code")
	case len(e.SideEffect) > maxSideEffect || !utf8.ValidString(e.SideEffect):
		return broker.InvalidField("side_effect", "side_effect must be valid UTF-8 of at most %d bytes", maxSideEffect)
	}
	if u := e.Undo; u != nil {
		p, err := url.Parse(u.URL)
		switch {
		case err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.User != nil || len(u.URL) > 2048:
			return broker.InvalidField("undo.url", "undo.url must be an absolute http(s) URL without user info, at most 2048 bytes")
		case !slices.Contains([]string{"DELETE", "POST", "PUT", "PATCH"}, u.Method):
			return broker.InvalidField("undo.method", "undo.method must be DELETE, POST, PUT or PATCH")
		case len(u.Body) > maxUndoBody:
			return broker.InvalidField("undo.body", "undo.body must be at most %d bytes", maxUndoBody)
		case len(u.ContentType) > 128 || strings.ContainsAny(u.ContentType, "\r\n"):
			return broker.InvalidField("undo.content_type", "undo.content_type is not a media type")
		}
	}
	return nil
}

// reportCaller authenticates a report: the task token of task a.TaskID,
// verified even if it expired within the retention, on record for that
// task. A DPoP-bound token needs a proof by its key or the reporting tool
// server's client credentials. The token alone is enough only while it is
// live (its task active and before its deadline, the token neither denied
// nor expired): a revoked or finished agent cannot add steps to its own
// rollback. After that, within the retention, a report is "late" and must
// come with a tool server's client credentials. It returns the claims,
// the task, whether the report is late, and the reporter.
func (s *Service) reportCaller(ctx context.Context, raw string, a ReportAuth) (broker.TaskClaims, broker.Task, bool, string, error) {
	fail := func(err error) (broker.TaskClaims, broker.Task, bool, string, error) {
		return broker.TaskClaims{}, broker.Task{}, false, "", err
	}
	if raw == "" {
		return fail(broker.Unauthenticated(errors.New("no task token")))
	}
	c, err := s.tokens.Verify(raw)
	if err != nil {
		if s.late == nil {
			s.log.WarnContext(ctx, "task token rejected", "token_sha256", broker.TokenHash(raw), "reason", err.Error())
			return fail(broker.Unauthenticated(err))
		}
		if c, err = s.late.VerifyExpired(raw, s.retention); err != nil {
			s.log.WarnContext(ctx, "task token rejected", "token_sha256", broker.TokenHash(raw), "reason", err.Error())
			return fail(broker.Unauthenticated(err))
		}
	}
	if c.TaskID != a.TaskID {
		return fail(broker.Errorf(broker.CodeNotFound, "task %q not found", a.TaskID))
	}
	reporter := c.Actor()
	if a.ClientID != "" {
		if reporter, err = s.auth.Authorize(ctx, a.ClientID, a.ClientSecret, ""); err != nil {
			return fail(err)
		}
	}
	if c.JKT != "" && (a.Proof != "" || a.ClientID == "") {
		if err := s.core.CheckProof(ctx, a.Proof, a.Method, a.URL, raw, c.JKT); err != nil {
			return fail(err)
		}
	}
	if a.ClientID == "" {
		// The agent reports (or reads) with its own token: the gate
		// decides, so a revoked, frozen, quarantined or distrusted chain,
		// or one under a revoked-before epoch, reports nothing.
		t, err := s.core.GateTaskToken(ctx, c)
		if err != nil {
			return fail(err)
		}
		return c, t, false, reporter, nil
	}
	lctx, cancel := broker.LedgerCtx(ctx)
	defer cancel()
	cred, denied, err := s.ledger.Credential(lctx, c.ID)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return fail(broker.Unauthenticated(fmt.Errorf("token %s is not on record", c.ID)))
	case err != nil:
		return fail(broker.Unavailable("the credential ledger", err))
	case cred.TaskID != c.TaskID:
		return fail(broker.Unauthenticated(fmt.Errorf("token %s is not of task %s", c.ID, c.TaskID)))
	}
	t, _, err := s.ledger.Task(lctx, c.TaskID)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return fail(broker.Unauthenticated(fmt.Errorf("task %s is not on record", c.TaskID)))
	case err != nil:
		return fail(broker.Unavailable("the credential ledger", err))
	}
	now := s.now()
	live := t.State == broker.StateActive && now.Before(t.Deadline) && !denied && now.Before(cred.ExpiresAt)
	if !now.Before(t.Deadline.Add(s.retention)) {
		return fail(broker.Unauthenticated(fmt.Errorf("task %s ended more than the retention ago", t.ID)))
	}
	return c, t, !live, reporter, nil
}

// ReportEvent stores and audits one tool call reported with the task's
// token (see reportCaller). The tool must be one the token grants or a
// sensitive tool of the task's template.
func (s *Service) ReportEvent(ctx context.Context, raw string, a ReportAuth, rep EventReport) (ToolEvent, error) {
	store, err := s.recordStore()
	if err != nil {
		return ToolEvent{}, err
	}
	c, t, late, reporter, err := s.reportCaller(ctx, raw, a)
	if err != nil {
		return ToolEvent{}, err
	}
	if !slices.Contains(c.Tools, rep.Tool) && !slices.Contains(c.ActionTools, rep.Tool) {
		return ToolEvent{}, &broker.Error{Code: broker.CodeForbidden, Rule: "tools", Field: "tool",
			Message: fmt.Sprintf("tool %q is not granted to this task", rep.Tool)}
	}
	with := ReportedWithTaskToken
	if a.ClientID != "" {
		with = ReportedWithClient
	}
	ev := ToolEvent{ID: broker.NewID("evt"), TaskID: t.ID, Tool: rep.Tool, Outcome: rep.Outcome, Status: rep.Status,
		SideEffect: rep.SideEffect, Undo: rep.Undo, Agent: c.Actor(), Reporter: reporter, JTI: c.ID,
		ReportedAt: s.now().UTC(), ReportedWith: with, Late: late}
	b, err := json.Marshal(ev)
	if err != nil {
		return ToolEvent{}, &broker.Error{Code: broker.CodeInternal, Message: "encoding the event failed", Err: err}
	}
	// Take one of the task's maxEvents slots before anything is audited: a
	// report over the cap is refused without a tool.called in the trail.
	// The slot list never shrinks, so the events list (appended only after
	// a slot is taken) never refuses for lack of room.
	until := t.Deadline.Add(s.retention)
	sctx, scancel := broker.LedgerCtx(ctx)
	err = store.Append(sctx, "event-slots", t.ID, []byte(ev.ID), until, maxEvents)
	scancel()
	switch {
	case errors.Is(err, broker.ErrExists):
		s.log.WarnContext(ctx, "tool-call report refused: the task's events are full", "task_id", t.ID, "max", maxEvents)
		return ToolEvent{}, &broker.Error{Code: broker.CodeConflict, Message: fmt.Sprintf("task %s already has %d events; no more are kept", t.ID, maxEvents), Err: err}
	case err != nil:
		return ToolEvent{}, broker.Unavailable("the record store", err)
	}
	ae := s.core.TaskEvent(ctx, "tool.called", reporter, t)
	ae.Outcome, ae.Creds = rep.Outcome, []string{c.ID}
	ae.Detail = map[string]any{"event_id": ev.ID, "tool": rep.Tool, "agent": ev.Agent, "reported_with": with, "late": late}
	if rep.Status != 0 {
		ae.Detail["status"] = rep.Status
	}
	if rep.SideEffect != "" {
		ae.Detail["side_effect"] = rep.SideEffect
	}
	if u := rep.Undo; u != nil {
		undo := map[string]any{"method": u.Method, "url": u.auditURL()}
		if u.Body != "" {
			undo["body_sha256"] = shaPrefix(u.Body)
		}
		ae.Detail["undo"] = undo
	}
	// Audit first: an event that is not in the trail is not kept.
	if err := s.audit.Record(ctx, ae); err != nil {
		return ToolEvent{}, broker.Unavailable("the audit log", err)
	}
	lctx, cancel := broker.LedgerCtx(ctx)
	defer cancel()
	err = store.Append(lctx, "events", t.ID, b, until, maxEvents)
	switch {
	case errors.Is(err, broker.ErrExists):
		return ToolEvent{}, &broker.Error{Code: broker.CodeConflict, Message: fmt.Sprintf("task %s already has %d events; no more are kept", t.ID, maxEvents), Err: err}
	case err != nil:
		return ToolEvent{}, broker.Unavailable("the record store", err)
	}
	s.log.InfoContext(ctx, "tool call reported", "task_id", t.ID, "event_id", ev.ID, "tool", rep.Tool, "outcome", rep.Outcome, "late", late)
	return ev, nil
}

// TaskEvents lists a task's events for the holder of one of its tokens
// (authenticated as for a report).
func (s *Service) TaskEvents(ctx context.Context, raw string, a ReportAuth) ([]ToolEvent, error) {
	if _, _, _, _, err := s.reportCaller(ctx, raw, a); err != nil {
		return nil, err
	}
	return s.events(ctx, a.TaskID)
}

// IsTaskToken reports whether raw verifies as one of Valet's task tokens
// (even expired within the event retention): the HTTP layer uses it to
// tell a task token from an admin token on GET /v1/tasks/{id}/events.
func (s *Service) IsTaskToken(raw string) bool {
	if _, err := s.tokens.Verify(raw); err == nil {
		return true
	}
	if s.late == nil {
		return false
	}
	_, err := s.late.VerifyExpired(raw, s.retention)
	return err == nil
}

// events reads a task's stored events, oldest first.
func (s *Service) events(ctx context.Context, taskID string) ([]ToolEvent, error) {
	store, err := s.recordStore()
	if err != nil {
		return nil, err
	}
	lctx, cancel := broker.LedgerCtx(ctx)
	defer cancel()
	items, err := store.Items(lctx, "events", taskID, maxEvents)
	if err != nil {
		return nil, broker.Unavailable("the record store", err)
	}
	out := make([]ToolEvent, 0, len(items))
	for _, b := range items {
		var e ToolEvent
		if err := json.Unmarshal(b, &e); err != nil {
			s.log.ErrorContext(ctx, "skipping an unreadable event record", "task_id", taskID, "err", err)
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// AdminTaskEvents lists a task's events for an admin: the caller has
// authorized the admin (viewer and up).
func (s *Service) AdminTaskEvents(ctx context.Context, id string) ([]ToolEvent, error) {
	return s.events(ctx, id)
}
