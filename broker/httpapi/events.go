package httpapi

import (
	"encoding/base64"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/toolevents"
)

// reportAuth reads what authenticates a report beside the task token: the
// DPoP proof and the tool server's optional client credentials, sent as
// "Valet-Client-Authorization: Basic base64(id:secret)".
func (a *api) reportAuth(r *http.Request) (toolevents.ReportAuth, error) {
	ra := toolevents.ReportAuth{TaskID: chi.URLParam(r, "id"), Proof: r.Header.Get("DPoP"), Method: r.Method, URL: a.requestURL(r)}
	h := r.Header.Get("Valet-Client-Authorization")
	if h == "" {
		return ra, nil
	}
	scheme, enc, ok := strings.Cut(h, " ")
	if ok && strings.EqualFold(scheme, "Basic") {
		if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(enc)); err == nil {
			if id, secret, ok := strings.Cut(string(b), ":"); ok && id != "" {
				ra.ClientID, ra.ClientSecret = id, secret
				return ra, nil
			}
		}
	}
	return ra, &broker.Error{Code: broker.CodeUnauthenticated, Message: "Valet-Client-Authorization must be Basic client credentials"}
}

// reportEvent is POST /v1/tasks/{id}/events: a tool server (or the agent)
// reports one tool call with the task's token.
func (a *api) reportEvent(w http.ResponseWriter, r *http.Request) {
	if err := requireContentType(r, "application/json"); err != nil {
		a.writeError(w, r, err)
		return
	}
	rep, err := toolevents.DecodeEventReport(r.Body)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ra, err := a.reportAuth(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ev, err := a.opts.Events.ReportEvent(r.Context(), taskToken(r), ra, rep)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"event": ev.View()})
}

// listEvents is GET /v1/tasks/{id}/events: with one of the task's tokens,
// or an admin token of the viewer role (when the admin API is on).
func (a *api) listEvents(w http.ResponseWriter, r *http.Request) {
	raw, id := taskToken(r), chi.URLParam(r, "id")
	var evs []toolevents.ToolEvent
	var err error
	if a.opts.Admin != nil && raw != "" && !a.opts.Events.IsTaskToken(raw) {
		if _, ok := a.admin(w, r, incident.RoleViewer, "tasks.events"); !ok {
			return
		}
		evs, err = a.opts.Events.AdminTaskEvents(r.Context(), id)
	} else {
		var ra toolevents.ReportAuth
		if ra, err = a.reportAuth(r); err == nil {
			evs, err = a.opts.Events.TaskEvents(r.Context(), raw, ra)
		}
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]map[string]any, len(evs))
	for i, e := range evs {
		out[i] = e.View()
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]any{"task_id": id, "events": out})
}

// adminRollbackPlan is GET /v1/admin/tasks/{id}/rollback: the undo steps,
// newest first.
func (a *api) adminRollbackPlan(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleResponder, "tasks.rollback_plan"); !ok {
		return
	}
	steps, err := a.opts.Events.RollbackPlan(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"task_id": chi.URLParam(r, "id"), "steps": steps})
}

// adminRollbackStep is POST /v1/admin/tasks/{id}/rollback/{event_id}: call
// one undo webhook (?confirm=revoked_reporter for a step whose reporter was
// revoked since).
func (a *api) adminRollbackStep(w http.ResponseWriter, r *http.Request) {
	p, ok := a.admin(w, r, incident.RoleResponder, "tasks.rollback")
	if !ok {
		return
	}
	confirm := r.URL.Query().Get("confirm")
	if confirm != "" && confirm != "revoked_reporter" {
		a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Field: "confirm", Message: "confirm must be revoked_reporter"})
		return
	}
	step, err := a.opts.Events.RollbackRun(r.Context(), p.Actor(), chi.URLParam(r, "id"), chi.URLParam(r, "event_id"), confirm == "revoked_reporter")
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"task_id": chi.URLParam(r, "id"), "step": step})
}
