package httpapi

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/inventory"
)

// adminAgents is GET /v1/admin/agents: the agent inventory, filtered,
// sorted and paged by cursor.
func (a *api) adminAgents(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "agents.read"); !ok {
		return
	}
	v := r.URL.Query()
	q := inventory.Query{Issuer: v.Get("issuer"), SubjectPrefix: v.Get("subject_prefix"), Template: v.Get("template"),
		Sort: inventory.Sort(v.Get("sort")), Cursor: v.Get("cursor")}
	if l := v.Get("label"); l != "" {
		k, val, ok := incident.LabelParts(l)
		if !ok {
			a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Message: "label must be key=value", Field: "label"})
			return
		}
		q.LabelKey, q.LabelValue = k, val
	}
	if s := v.Get("seen_since"); s != "" {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Message: "seen_since must be an RFC 3339 time", Field: "seen_since"})
			return
		}
		q.SeenSince = t
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > inventory.MaxPage {
			a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Message: "limit must be a number from 1 to 500", Field: "limit"})
			return
		}
		q.Limit = n
	}
	p, err := a.opts.Admin.Agents(r.Context(), q)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// adminAgent is GET /v1/admin/agents/{id}: one agent, its live tasks and
// the controls over it.
func (a *api) adminAgent(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "agents.read"); !ok {
		return
	}
	id := chi.URLParam(r, "id")
	if !inventory.ValidID(id) {
		a.writeError(w, r, &broker.Error{Code: broker.CodeNotFound, Message: "agent ids look like agt_ and 32 hex digits", Field: "id"})
		return
	}
	d, err := a.opts.Admin.Agent(r.Context(), id)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// adminFreezeLabel is POST /v1/admin/controls with a label: freeze (or, in
// a dry run, count) every agent of the inventory with that label.
func (a *api) adminFreezeLabel(w http.ResponseWriter, r *http.Request, p incident.AdminPrincipal, req controlRequest) {
	switch {
	case req.Kind != broker.ControlFreezeAgent:
		a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Message: "a label or dry_run control must be of kind freeze_agent", Field: "kind"})
		return
	case req.Target != "" || req.Issuer != "":
		a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Message: "a label freeze names no target or issuer: the inventory gives them", Field: "target"})
		return
	case req.Label == "":
		a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Message: "dry_run previews a freeze by label; set label", Field: "label"})
		return
	}
	out, err := a.opts.Admin.FreezeLabel(r.Context(), p, req.Label, req.Reason, req.Revoke, req.DryRun)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	status := http.StatusCreated
	if req.DryRun {
		status = http.StatusOK
	}
	writeJSON(w, status, out)
}
