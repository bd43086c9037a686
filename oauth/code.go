package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/renewal"
)

// refreshRecord is a refresh token's record, under "refresh:" and the
// token's SHA-256. Used is set when it is redeemed: a second use is a
// stolen token, and ends the task (RFC 9700 section 4.14.2).
type refreshRecord struct {
	ClientID string `json:"client_id"`
	TaskID   string `json:"task_id"`
	Family   string `json:"family"`
	Used     bool   `json:"used"`
	// Resources are the task's audiences: a refresh request may name
	// them again (RFC 8707 section 2.2), never another.
	Resources []string `json:"resources,omitempty"`
	// Scope is the task's as granted; a refresh may repeat it or a part.
	Scope string `json:"scope,omitempty"`
	// User is the person the task acts for, as verified at sign-in; every
	// refresh checks the template's users rule against it.
	User *personRecord `json:"user,omitempty"`
}

// sameScope reports whether scope asks for nothing beyond rec's.
func sameScope(scope string, rec refreshRecord) bool {
	granted := strings.Fields(rec.Scope)
	return !slices.ContainsFunc(strings.Fields(scope), func(v string) bool { return !slices.Contains(granted, v) })
}

// taskScope is the scope value of a task, as tokenResponse answers it.
func taskScope(task broker.Task) string {
	return strings.Join(append([]string{TemplateScope + task.Template}, task.Tools...), " ")
}

// serveCode answers grant_type=authorization_code (RFC 6749 section
// 4.1.3, RFC 7636 section 4.5): the code is taken (it never works twice),
// then client_id, redirect_uri, the PKCE verifier and any resource must
// match what it was issued for. The task is declared through
// Service.DeclareWith for the client on behalf of the person.
func (e *Endpoint) serveCode(w http.ResponseWriter, r *http.Request) {
	in, f := e.interactive, r.PostForm
	if oerr := single(f); oerr != nil {
		e.writeError(w, r, oerr)
		return
	}
	switch {
	case f.Get("code") == "":
		e.writeError(w, r, refuse(ErrInvalidRequest, "code is required"))
		return
	case f.Get("client_id") == "":
		e.writeError(w, r, &Error{Code: ErrInvalidClient, Description: "client_id is required (public clients authenticate by PKCE)", Status: http.StatusUnauthorized})
		return
	case f.Get("code_verifier") == "":
		e.writeError(w, r, refuse(ErrInvalidRequest, "code_verifier is required (PKCE)"))
		return
	case f.Has("client_secret") || f.Has("client_assertion"):
		e.writeError(w, r, &Error{Code: ErrInvalidClient, Description: "interactive clients are public: no client secret or assertion", Status: http.StatusUnauthorized})
		return
	}
	resources, oerr := decodeResources(f["resource"])
	if oerr != nil {
		e.writeError(w, r, oerr)
		return
	}
	var a authzRequest
	if oerr := in.take(r.Context(), "code:"+hashHex(f.Get("code")), &a); oerr != nil {
		oerr.Description = "the code is " + oerr.Description
		e.writeError(w, r, oerr)
		return
	}
	switch {
	case f.Get("client_id") != a.ClientID:
		oerr = refuse(ErrInvalidGrant, "the code was issued to another client")
	case f.Get("redirect_uri") != a.RedirectURI:
		oerr = refuse(ErrInvalidGrant, "redirect_uri is not the one of the authorization request")
	case !pkceMatches(f.Get("code_verifier"), a.Challenge):
		oerr = refuse(ErrInvalidGrant, "code_verifier does not match the code_challenge")
	case len(resources) > 0 && slices.ContainsFunc(resources, func(res string) bool { return !slices.Contains(a.Resources, res) }):
		oerr = refuse(ErrInvalidTarget, "resource was not part of the authorization request")
	}
	if oerr != nil {
		e.writeError(w, r, oerr)
		return
	}
	d := a.declaration()
	if len(resources) > 0 {
		d.Resources = resources
	}
	d.Proof, d.Method, d.URL = r.Header.Get("DPoP"), r.Method, e.issuer+r.URL.EscapedPath()
	client := clientPrincipal(a.ClientID)
	task, minted, err := e.svc.DeclareWith(r.Context(), verified(client), a.ClientID, d)
	if err != nil {
		e.writeError(w, r, fromBroker(err, GrantAuthorizationCode, a.How))
		return
	}
	body := tokenResponse(task, minted, d)
	if in.renewer != nil {
		rt, err := in.newRefresh(r.Context(), e, task, d.Resources, a.ClientID, randomToken(), a.User)
		if err != nil {
			// The task stands recorded and audited; the client just gets
			// no refresh token.
			e.log.WarnContext(r.Context(), "refresh token not recorded", "task_id", task.ID, "error", err.Error())
		} else if rt != "" {
			body["refresh_token"] = rt
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, body)
}

// serveRefresh answers grant_type=refresh_token (RFC 6749 section 6): the
// token is marked used and its task renewed (renewal.Service.RenewAs: the
// gate, the template as it is now, never past max_lifetime); the answer
// carries a new refresh token of the same family. A token used a second
// time ends its task, which every token of its family names.
func (e *Endpoint) serveRefresh(w http.ResponseWriter, r *http.Request) {
	in, f := e.interactive, r.PostForm
	if oerr := single(f); oerr != nil {
		e.writeError(w, r, oerr)
		return
	}
	switch {
	case in.renewer == nil:
		e.writeError(w, r, refuse(ErrUnsupportedGrantType, "refresh tokens are not issued here"))
		return
	case f.Get("refresh_token") == "" || len(f.Get("refresh_token")) > 256:
		e.writeError(w, r, refuse(ErrInvalidRequest, "refresh_token is required"))
		return
	case f.Get("client_id") == "":
		e.writeError(w, r, &Error{Code: ErrInvalidClient, Description: "client_id is required", Status: http.StatusUnauthorized})
		return
	case f.Has("authorization_details"):
		e.writeError(w, r, refuse(ErrInvalidRequest, "a refresh renews the task as it was granted: no authorization_details"))
		return
	}
	resources, oerr := decodeResources(f["resource"])
	if oerr != nil {
		e.writeError(w, r, oerr)
		return
	}
	key := "refresh:" + hashHex(f.Get("refresh_token"))
	lctx, cancel := broker.LedgerCtx(r.Context())
	rec, oerr := refreshRecordOf(in.store.Get(lctx, key))
	cancel()
	switch {
	case oerr != nil:
		e.writeError(w, r, oerr)
		return
	case rec.ClientID != f.Get("client_id"):
		e.writeError(w, r, refuse(ErrInvalidGrant, "the refresh token was issued to another client"))
		return
	case slices.ContainsFunc(resources, func(res string) bool { return !slices.Contains(rec.Resources, res) }):
		e.writeError(w, r, refuse(ErrInvalidTarget, "a refresh keeps the task's resources: name none other"))
		return
	case f.Has("scope") && !sameScope(f.Get("scope"), rec):
		e.writeError(w, r, refuse(ErrInvalidScope, "a refresh keeps the task's scope: name no other"))
		return
	}
	used := rec
	used.Used = true
	mark, _ := json.Marshal(used)
	lctx, cancel = broker.LedgerCtx(r.Context())
	was, oerr := refreshRecordOf(in.store.Swap(lctx, key, mark))
	cancel()
	switch {
	case oerr != nil:
		e.writeError(w, r, oerr)
		return
	case was.Used:
		e.refreshReused(w, r, was)
		return
	}
	task, minted, err := in.renewer.RenewAs(r.Context(), clientPrincipal(rec.ClientID), renewal.Request{TaskID: rec.TaskID, User: rec.User.principal()})
	if err != nil {
		// Nothing was renewed: the token is unspent again (a task that
		// ended refuses it anyway), so a retry is not taken for a theft.
		unspent, _ := json.Marshal(rec)
		lctx, cancel = broker.LedgerCtx(r.Context())
		if _, serr := in.store.Swap(lctx, key, unspent); serr != nil {
			e.log.WarnContext(r.Context(), "refresh token left spent after a failed renewal", "task_id", rec.TaskID, "error", serr.Error())
		}
		cancel()
		oe := fromBroker(err, GrantRefreshToken, viaScope)
		var be *broker.Error
		if errors.As(err, &be) && (be.Code == broker.CodeConflict || be.Code == broker.CodeNotFound) {
			oe.Code, oe.Status = ErrInvalidGrant, http.StatusBadRequest
		}
		e.writeError(w, r, oe)
		return
	}
	rt, err := in.newRefresh(r.Context(), e, task, rec.Resources, rec.ClientID, rec.Family, rec.User)
	if err != nil {
		e.writeError(w, r, unavailable(err))
		return
	}
	out := tokenResponse(task, minted, broker.Declaration{Resources: rec.Resources})
	if rt != "" {
		out["refresh_token"] = rt
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, out)
}

// refreshReused ends the task of a refresh token used twice: one of its
// holders is not the client.
func (e *Endpoint) refreshReused(w http.ResponseWriter, r *http.Request, rec refreshRecord) {
	e.log.WarnContext(r.Context(), "refresh token reused: ending its task", "task_id", rec.TaskID, "client_id", broker.Bound(rec.ClientID, 256))
	_, _, err := e.svc.End(r.Context(), rec.TaskID, broker.StateRevoked, "refresh token reused", "oauth:refresh")
	if err != nil && !errors.Is(err, broker.ErrNotActive) && !errors.Is(err, broker.ErrRevocationPending) {
		e.writeError(w, r, unavailable(fmt.Errorf("ending task %s after refresh token reuse: %w", rec.TaskID, err)))
		return
	}
	e.writeError(w, r, refuse(ErrInvalidGrant, "the refresh token was used before; its task was ended"))
}

// newRefresh records a new refresh token of family for task, living no
// longer than the task may (CreatedAt + the template's max_lifetime). It
// answers "" when the task cannot be renewed beyond its deadline anyway.
// resources are the task's audiences as asked (none: the template's).
func (in *interactive) newRefresh(ctx context.Context, e *Endpoint, task broker.Task, resources []string, clientID, family string, user *personRecord) (string, error) {
	tmpl, ok := e.svc.Templates().Get(task.Template)
	if !ok {
		return "", nil
	}
	limit := task.CreatedAt.Add(max(tmpl.MaxLifetime, tmpl.MaxTTL))
	if !limit.After(task.Deadline) || !limit.After(in.now()) {
		return "", nil
	}
	if len(resources) == 0 {
		resources = tmpl.Audiences
	}
	rt := "vrt_" + randomToken()
	if err := in.put(ctx, "refresh:"+hashHex(rt), refreshRecord{ClientID: clientID, TaskID: task.ID, Family: family, Resources: resources, Scope: taskScope(task), User: user}, limit); err != nil {
		return "", err
	}
	return rt, nil
}

// clientPrincipal is the principal of a public client: issuer
// ClientIssuer, subject its client id.
func clientPrincipal(id string) broker.Principal {
	return broker.Principal{Issuer: ClientIssuer, Subject: id, Claims: map[string]any{"iss": id, "sub": id, "client_id": id}}
}

// single refuses a parameter given twice (resource may repeat).
func single(f url.Values) *Error {
	for k, v := range f {
		if len(v) > 1 && k != "resource" {
			return refuse(ErrInvalidRequest, fmt.Sprintf("parameter %s is given more than once", boundKey(k)))
		}
	}
	return nil
}

// refreshRecordOf decodes a refresh token's record as the store answered
// it: invalid_grant when there is none, 503 when the store is down.
func refreshRecordOf(body []byte, err error) (refreshRecord, *Error) {
	var rec refreshRecord
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return rec, refuse(ErrInvalidGrant, "the refresh token is unknown or expired")
	case err != nil:
		return rec, unavailable(err)
	case json.Unmarshal(body, &rec) != nil:
		return rec, &Error{Code: ErrServerError, Description: "internal error", Status: http.StatusInternalServerError}
	}
	return rec, nil
}
