package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/wire"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/incident"
)

// Metrics is what the HTTP layer needs of the metrics adapter. A nil
// Handler leaves /metrics off this surface.
type Metrics interface {
	Handler() http.Handler
	Middleware(http.Handler) http.Handler
}

// streamPath is the one route exempt from the request timeout.
const streamPath = "/v1/revocations/stream"

// feedKeepalive is the longest silence on a revocation stream; feedWait is
// how long one wait for the feed blocks (bounding shutdown);
// feedWriteTimeout is how long a follower may take to accept one write.
const (
	feedKeepalive    = 15 * time.Second
	feedWait         = 5 * time.Second
	feedWriteTimeout = 30 * time.Second
)

// incidentRoutes adds the revocation feed, the admin API and /metrics, for
// whichever of them are configured.
func (a *api) incidentRoutes(r chi.Router) {
	if a.opts.Feed != nil {
		r.Get("/v1/revocations", a.revocations)
		r.Get(streamPath, a.revocationStream)
	}
	if a.opts.Admin != nil {
		r.Post("/v1/admin/revocations", a.adminRevoke)
		r.Get("/v1/admin/revocations/{id}", a.adminJob)
		r.Get("/v1/admin/controls", a.adminControls)
		r.Post("/v1/admin/controls", a.adminPutControl)
		r.Delete("/v1/admin/controls", a.adminDeleteControl)
		r.Get("/v1/admin/tasks", a.adminTasks)
		r.Get("/v1/admin/tasks/{id}", a.adminTask)
		r.Get("/v1/admin/tasks/{id}/timeline", a.adminTimeline)
		r.Get("/v1/admin/tasks/{id}/rollback", a.adminRollbackPlan)
		r.Post("/v1/admin/tasks/{id}/rollback/{event_id}", a.adminRollbackStep)
		r.Get("/v1/admin/agents", a.adminAgents)
		r.Get("/v1/admin/agents/{id}", a.adminAgent)
	}
	if a.opts.Metrics != nil && a.opts.Metrics.Handler() != nil { // nil: served on a listener of its own
		r.Method(http.MethodGet, "/metrics", a.opts.Metrics.Handler())
	}
}

// feedCaller authenticates a feed reader like introspection: HTTP Basic
// client secret or a bearer identity token of an allowed issuer.
func (a *api) feedCaller(r *http.Request) (string, error) {
	id, secret, basic := r.BasicAuth()
	bt := ""
	if !basic {
		id, secret, bt = "", "", bearer(r)
		if bt == "" {
			return "", &broker.Error{Code: broker.CodeUnauthenticated, Message: "client authentication required (HTTP Basic or Bearer)"}
		}
	}
	return a.opts.Clients.Authorize(r.Context(), id, secret, bt)
}

type feedRevoked struct {
	JTI    string `json:"jti"`
	TaskID string `json:"task_id"`
	Exp    int64  `json:"exp"`
}

type feedEpoch struct {
	Dimension broker.Dimension `json:"dimension"`
	Key       string           `json:"key"`
	Before    int64            `json:"before"`
}

// feedControl is a control put (Active) or lifted, as tool servers apply
// it: kind, target and the issuer a freeze is narrowed to.
type feedControl struct {
	Kind   broker.ControlKind `json:"kind"`
	Target string             `json:"target"`
	Issuer string             `json:"issuer"`
	Active bool               `json:"active"`
}

func feedControlOf(e broker.FeedEntry) feedControl {
	return feedControl{e.Control.Kind, e.Control.Target, e.Control.Issuer, e.ControlActive}
}

func (a *api) revocations(w http.ResponseWriter, r *http.Request) {
	if _, err := a.feedCaller(r); err != nil {
		a.writeError(w, r, err)
		return
	}
	entries, cursor, err := a.opts.FeedHub.Snapshot(r.Context(), time.Now())
	if err != nil {
		a.writeError(w, r, &broker.Error{Code: broker.CodeUnavailable, Message: "the revocation feed is unavailable", Err: err})
		return
	}
	body := struct {
		Cursor   string        `json:"cursor"`
		Revoked  []feedRevoked `json:"revoked"`
		Epochs   []feedEpoch   `json:"epochs"`
		Controls []feedControl `json:"controls"`
	}{Cursor: cursor, Revoked: []feedRevoked{}, Epochs: []feedEpoch{}, Controls: []feedControl{}}
	for _, e := range entries {
		if e.Control != nil {
			if e.ControlActive {
				body.Controls = append(body.Controls, feedControlOf(e))
			}
		} else if e.Epoch != nil {
			body.Epochs = append(body.Epochs, feedEpoch{e.Epoch.Dimension, e.Epoch.Key, e.Epoch.Before.UnixMilli()})
		} else {
			body.Revoked = append(body.Revoked, feedRevoked{e.JTI, e.TaskID, e.Exp.Unix()})
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, body)
}

// streams ends open revocation streams when their server shuts down (which
// otherwise waits for them).
type streams struct {
	once sync.Once
	done chan struct{}
}

// revocationStream serves one follower from the broker's fan-out: no
// follower holds a connection of the ledger's pool, and the hub caps them.
func (a *api) revocationStream(w http.ResponseWriter, r *http.Request) {
	caller, err := a.feedCaller(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok {
		a.streams.once.Do(func() { srv.RegisterOnShutdown(func() { close(a.streams.done) }) })
	}
	cursor := r.URL.Query().Get("cursor")
	if cursor == "" {
		cursor = r.Header.Get("Last-Event-ID")
	}
	// Subscribing checks the cursor and the caps before the stream is
	// committed to.
	sub, err := a.opts.FeedHub.Subscribe(r.Context(), caller, cursor)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	defer sub.Close()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": cursor %s\n\n", sub.Cursor())
	quiet := time.Now()
	var entries []broker.FeedEntry
	for {
		// A follower that stops reading is cut off after feedWriteTimeout
		// (the server's own write timeout would cut every stream).
		_ = rc.SetWriteDeadline(time.Now().Add(feedWriteTimeout))
		for _, e := range entries {
			var data []byte
			event := "revoked"
			if e.Control != nil {
				event = "control"
				data, _ = json.Marshal(feedControlOf(e))
			} else if e.Epoch != nil {
				event = "epoch"
				data, _ = json.Marshal(feedEpoch{e.Epoch.Dimension, e.Epoch.Key, e.Epoch.Before.UnixMilli()})
			} else {
				data, _ = json.Marshal(feedRevoked{e.JTI, e.TaskID, e.Exp.Unix()})
			}
			fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", e.Cursor, event, data)
		}
		if len(entries) > 0 {
			quiet = time.Now()
		} else if time.Since(quiet) >= feedKeepalive {
			fmt.Fprint(w, ": keepalive\n\n")
			quiet = time.Now()
		}
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-a.streams.done:
			return
		default:
		}
		entries, err = sub.Next(r.Context(), min(feedWait, feedKeepalive-time.Since(quiet)+time.Millisecond))
		if err != nil {
			if reason := dropReason(err); reason != "" {
				// The follower reconnects from the last id it applied.
				_ = rc.SetWriteDeadline(time.Now().Add(feedWriteTimeout))
				fmt.Fprintf(w, "event: dropped\ndata: {\"reason\":%q}\n\n", reason)
				_ = rc.Flush()
			} else if r.Context().Err() == nil {
				a.log.WarnContext(r.Context(), "revocation stream ended: feed unavailable", "err", err)
			}
			return
		}
	}
}

// dropReason names why the fan-out dropped a follower, or "".
func dropReason(err error) string {
	switch {
	case errors.Is(err, fanout.ErrLagged):
		return "lagged"
	case errors.Is(err, fanout.ErrCatchupLimit):
		return "catchup_limit"
	}
	return ""
}

// admin authorizes the caller for action with role need.
func (a *api) admin(w http.ResponseWriter, r *http.Request, need incident.Role, action string) (incident.AdminPrincipal, bool) {
	p, err := a.opts.Admin.Authorize(r.Context(), bearer(r), need, action)
	if err != nil {
		a.writeError(w, r, err)
		return p, false
	}
	return p, true
}

type revokeRequest struct {
	Selector incident.Selector `json:"selector"`
	Reason   string            `json:"reason"`
	DryRun   bool              `json:"dry_run"`
}

func (a *api) adminRevoke(w http.ResponseWriter, r *http.Request) {
	p, ok := a.admin(w, r, incident.RoleResponder, "revoke")
	if !ok {
		return
	}
	var req revokeRequest
	if err := decodeJSON(r, &req); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.DryRun {
		d, err := a.opts.Admin.DryRun(r.Context(), req.Selector)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"dry_run": true, "tasks_matched": d.Tasks, "matched": d.Matched, "sample": d.Sample})
		return
	}
	j, err := a.opts.Admin.Revoke(r.Context(), p, req.Selector, req.Reason)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if j.State != incident.JobDone {
		status = http.StatusAccepted
	}
	w.Header().Set("Location", "/v1/admin/revocations/"+j.ID)
	writeJSON(w, status, map[string]any{"job": j})
}

func (a *api) adminJob(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "revocation.read"); !ok {
		return
	}
	j, err := a.opts.Admin.Job(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"job": j})
}

func (a *api) adminControls(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "controls.read"); !ok {
		return
	}
	cs, err := a.opts.Admin.Controls(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"controls": cs})
}

type controlRequest struct {
	Kind   broker.ControlKind `json:"kind"`
	Target string             `json:"target"`
	Issuer string             `json:"issuer"`
	Reason string             `json:"reason"`
	Revoke bool               `json:"revoke"`
	Force  bool               `json:"force"`
	// Label ("key=value") freezes every agent of the inventory with that
	// label (kind freeze_agent, no target); DryRun previews it.
	Label  string `json:"label"`
	DryRun bool   `json:"dry_run"`
}

func (a *api) adminPutControl(w http.ResponseWriter, r *http.Request) {
	p, ok := a.admin(w, r, incident.RoleResponder, "controls.set")
	if !ok {
		return
	}
	var req controlRequest
	if err := decodeJSON(r, &req); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.Label != "" || req.DryRun {
		a.adminFreezeLabel(w, r, p, req)
		return
	}
	c, job, err := a.opts.Admin.PutControl(r.Context(), p, broker.Control{Kind: req.Kind, Target: req.Target, Issuer: req.Issuer, Reason: req.Reason}, req.Revoke, req.Force)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	body := map[string]any{"control": c}
	if job != nil {
		body["job"] = job
	}
	writeJSON(w, http.StatusCreated, body)
}

func (a *api) adminDeleteControl(w http.ResponseWriter, r *http.Request) {
	p, ok := a.admin(w, r, incident.RoleResponder, "controls.lift")
	if !ok {
		return
	}
	q := r.URL.Query()
	c := broker.Control{Kind: broker.ControlKind(q.Get("kind")), Target: q.Get("target"), Issuer: q.Get("issuer")}
	if err := incident.ValidateControl(c); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.opts.Admin.DeleteControl(r.Context(), p, c); err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"lifted": c.ID()})
}

func (a *api) adminTasks(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "tasks.read"); !ok {
		return
	}
	q := r.URL.Query()
	f := incident.TaskFilter{Agent: q.Get("agent"), Issuer: q.Get("issuer"), Template: q.Get("template"), State: broker.State(q.Get("state")),
		Cursor: q.Get("cursor")}
	switch f.State {
	case "", broker.StateActive, broker.StateCompleted, broker.StateExpired, broker.StateRevoked:
	default:
		a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Message: "state must be active, completed, expired or revoked", Field: "state"})
		return
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Message: "limit must be a number from 1 to 1000", Field: "limit"})
			return
		}
		f.Limit = n
	}
	ts, next, err := a.opts.Admin.TaskPage(r.Context(), f)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	body := map[string]any{"tasks": ts}
	if next != "" {
		body["next_cursor"] = next
	}
	writeJSON(w, http.StatusOK, body)
}

func (a *api) adminTask(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "tasks.read"); !ok {
		return
	}
	t, cs, err := a.opts.Admin.TaskDetail(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if cs == nil {
		cs = []broker.Credential{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"task": t, "credentials": cs})
}

func (a *api) adminTimeline(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "tasks.timeline"); !ok {
		return
	}
	evs, err := a.opts.Admin.Timeline(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"task_id": chi.URLParam(r, "id"), "events": evs})
}

// decodeJSON reads a JSON request body strictly (wire.DecodeJSON) after
// checking its Content-Type.
func decodeJSON(r *http.Request, v any) error {
	if err := requireContentType(r, "application/json"); err != nil {
		return err
	}
	return wire.DecodeJSON(r.Body, v)
}
