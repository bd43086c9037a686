package httpapi

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/stepup"
)

// requestAction is POST /v1/tasks/{id}/actions: a one-shot action token
// (201), a pending approval (202), or a refusal naming the rule (403).
func (a *api) requestAction(w http.ResponseWriter, r *http.Request) {
	if err := requireContentType(r, "application/json"); err != nil {
		a.writeError(w, r, err)
		return
	}
	req, err := stepup.DecodeActionRequest(r.Body)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	req.TaskID = chi.URLParam(r, "id")
	req.Proof, req.Method, req.URL = r.Header.Get("DPoP"), r.Method, a.requestURL(r)
	res, err := a.steps.RequestAction(r.Context(), taskToken(r), req)
	a.writeAction(w, r, req.TaskID, res, err)
}

// actionStatus is GET /v1/tasks/{id}/actions/{approval_id}: the agent's
// poll of an approval.
func (a *api) actionStatus(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	res, err := a.steps.ActionStatus(r.Context(), taskToken(r), id, chi.URLParam(r, "approval_id"),
		r.Header.Get("DPoP"), r.Method, a.requestURL(r))
	a.writeAction(w, r, id, res, err)
}

func (a *api) writeAction(w http.ResponseWriter, r *http.Request, taskID string, res stepup.ActionResult, err error) {
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if p := res.Pending; p != nil {
		w.Header().Set("Location", "/v1/tasks/"+taskID+"/actions/"+p.ID)
		w.Header().Set("Retry-After", "2")
		writeJSON(w, http.StatusAccepted, map[string]any{"status": "pending", "approval_id": p.ID,
			"tool": p.Tool, "args_hash": p.ArgsHash, "expires_at": p.ExpiresAt.UTC().Format(time.RFC3339)})
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"status": "granted", "action_token": res.Token, "token_type": "action+jwt",
		"jti": res.JTI, "tool": res.Tool, "args_hash": res.ArgsHash, "expires_at": res.ExpiresAt.UTC().Format(time.RFC3339),
		"expires_in": int64(res.ExpiresAt.Sub(res.IssuedAt) / time.Second)})
}

// consumeAction is POST /v1/actions/consume: a tool server uses up an
// action token (client authentication as for introspection).
func (a *api) consumeAction(w http.ResponseWriter, r *http.Request) {
	token, caller, err := a.tokenForm(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	use, err := a.steps.ConsumeAction(r.Context(), caller, token)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if !use.Consumed {
		writeJSON(w, http.StatusOK, map[string]any{"consumed": false})
		return
	}
	c := use.Claims
	writeJSON(w, http.StatusOK, map[string]any{"consumed": true, "jti": c.ID, "task_id": c.TaskID, "tool": c.Tool,
		"args_hash": c.ArgsHash, "exp": c.ExpiresAt.Unix()})
}

// approver authenticates the approver API (HTTP Basic).
func (a *api) approver(r *http.Request) (string, error) {
	id, secret, ok := r.BasicAuth()
	if !ok {
		return "", &broker.Error{Code: broker.CodeUnauthenticated, Message: "approver authentication required (HTTP Basic)"}
	}
	return a.steps.AuthorizeApprover(r.Context(), id, secret)
}

// listApprovals is GET /v1/approvals?state=&agent=&template=&task_id=&limit=&cursor=.
func (a *api) listApprovals(w http.ResponseWriter, r *http.Request) {
	if _, err := a.approver(r); err != nil {
		a.writeError(w, r, err)
		return
	}
	v := r.URL.Query()
	q := stepup.ApprovalQuery{State: stepup.ApprovalState(v.Get("state")), Agent: v.Get("agent"), Template: v.Get("template"),
		TaskID: v.Get("task_id"), Cursor: v.Get("cursor")}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Field: "limit", Message: "limit must be a positive integer"})
			return
		}
		q.Limit = n
	}
	list, next, err := a.steps.ListApprovals(r.Context(), q)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	body := map[string]any{"approvals": list}
	if next != "" {
		body["next_cursor"] = next
	}
	writeJSON(w, http.StatusOK, body)
}

// decideApproval is POST /v1/approvals/{id}/approve and .../deny.
func (a *api) decideApproval(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		who, err := a.approver(r)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		var body struct {
			Reason string `json:"reason"`
		}
		if r.ContentLength != 0 {
			if err := decodeJSON(r, &body); err != nil {
				a.writeError(w, r, err)
				return
			}
		}
		ap, err := a.steps.DecideApproval(r.Context(), who, chi.URLParam(r, "id"), approve, body.Reason)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"approval": ap})
	}
}

// clearRequirement is POST /v1/approval-requirements/clear: an approver
// ends an agent's monitor approval requirement.
func (a *api) clearRequirement(w http.ResponseWriter, r *http.Request) {
	who, err := a.approver(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	var body stepup.RequirementClear
	if err := decodeJSON(r, &body); err != nil {
		a.writeError(w, r, err)
		return
	}
	cleared, err := a.steps.ClearRequirement(r.Context(), who, body)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"cleared": cleared})
}
