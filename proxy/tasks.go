package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maxDeclaration caps a declaration body the agent sends; Valet caps it
// too, tighter.
const maxDeclaration = 64 << 10

// declared is Valet's answer to a declaration, as far as the proxy reads
// it. Task is passed to the agent as Valet wrote it (it holds no secret).
type declared struct {
	Task        json.RawMessage `json:"task"`
	Credentials []struct {
		Kind        string `json:"kind"`
		Type        string `json:"type"`
		AccessToken string `json:"access_token"`
		Token       string `json:"token"`
		Username    string `json:"username"`
		Password    string `json:"password"`
		Wrapped     bool   `json:"wrapped"`
	} `json:"credentials"`
}

type taskView struct {
	ID       string    `json:"id"`
	Agent    string    `json:"agent"`
	Template string    `json:"template"`
	Tools    []string  `json:"tools"`
	Deadline time.Time `json:"deadline"`
}

// declare is POST /v1/tasks: the agent's declaration, sent to Valet with
// the proxy's identity. The agent gets the task and a handle, never a
// credential.
func (p *Proxy) declare(ctx context.Context, r *http.Request) *http.Response {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxDeclaration+1))
	if err != nil || len(body) > maxDeclaration {
		return refusal(http.StatusRequestEntityTooLarge, "body", "", fmt.Sprintf("the declaration must be at most %d bytes", maxDeclaration))
	}
	jkt, refused := p.declarationKey(ctx, r)
	if refused != nil {
		return refused
	}
	idTok, err := p.cfg.Identity(ctx)
	if err != nil {
		p.cfg.Logger.Error("proxy: reading the workload identity", "err", err)
		return refusal(http.StatusServiceUnavailable, "identity", "", "the proxy cannot read its workload identity token")
	}
	status, raw, err := p.valet(ctx, "/v1/tasks", idTok, "application/json", body)
	if err != nil {
		return refusal(http.StatusServiceUnavailable, "valet", "", "Valet cannot be reached")
	}
	if status != http.StatusCreated {
		return passThrough(status, raw) // Valet's refusal, which holds no secret
	}
	var d declared
	var tv taskView
	if err := json.Unmarshal(raw, &d); err != nil || json.Unmarshal(d.Task, &tv) != nil || tv.ID == "" || len(tv.Tools) == 0 {
		p.cfg.Logger.Error("proxy: Valet's declaration answer is not readable")
		return refusal(http.StatusBadGateway, "valet", "", "Valet's answer could not be read")
	}
	t := &Task{ID: tv.ID, Template: tv.Template, Agent: tv.Agent, Tools: tv.Tools, Deadline: tv.Deadline, jkt: jkt}
	t.ctx, t.cancel = context.WithDeadline(context.Background(), tv.Deadline)
	for _, c := range d.Credentials {
		switch {
		case c.Wrapped:
			return p.abandon(ctx, t, d, "the template delivers response-wrapped Vault secrets, which the proxy does not unwrap: remove vault.wrap_ttl")
		case c.Kind == "jwt":
			t.creds.taskToken = c.AccessToken
		case c.Kind == "vault_token":
			t.creds.vaultToken = c.Token
		case c.Kind == "vault_lease" && c.Type == "database":
			t.creds.dbUser, t.creds.dbSecret = c.Username, c.Password
		}
	}
	if _, ok := p.cfg.Templates.Get(t.Template); !ok {
		return p.abandon(ctx, t, d, fmt.Sprintf("template %q is not among the proxy's templates", t.Template))
	}
	if _, err := p.check(ctx, t, t.Tools[0]); err != nil {
		p.cfg.Logger.Warn("proxy: the new task's token does not pass the proxy's check", "task_id", t.ID, "err", err)
		return p.abandon(ctx, t, d, fmt.Sprintf("the task token does not pass the proxy's check: its template must list the proxy's audience %q", p.cfg.Audience))
	}
	handle, sum, err := newHandle()
	if err != nil {
		return p.abandon(ctx, t, d, "no handle could be made")
	}
	t.handle = sum
	p.add(t)
	p.cfg.Logger.Info("proxy: task declared", "task_id", t.ID, "template", t.Template, "handle", handleID(sum), "dpop_bound", jkt != "")
	answer := map[string]any{"task": d.Task, "handle": handle, "upstreams": p.upstreamNames(t)}
	if jkt != "" {
		answer["dpop_jkt"] = jkt
	}
	return jsonResponse(http.StatusCreated, answer)
}

// abandon completes at Valet a task the proxy cannot serve, so its
// credentials die now, and tells the agent why.
func (p *Proxy) abandon(ctx context.Context, t *Task, _ declared, why string) *http.Response {
	if t.creds.taskToken != "" {
		if status, _, err := p.valet(ctx, "/v1/tasks/"+url.PathEscape(t.ID)+"/complete", t.creds.taskToken, "", nil); err != nil || status != http.StatusOK {
			p.cfg.Logger.Error("proxy: completing an abandoned task failed; it ends at its deadline", "task_id", t.ID, "status", status, "err", err)
		}
	}
	t.cancel()
	return refusal(http.StatusUnprocessableEntity, "proxy", "", why)
}

func (p *Proxy) upstreamNames(t *Task) []string {
	tmpl, _ := p.cfg.Templates.Get(t.Template)
	var out []string
	for _, u := range tmpl.Upstreams {
		for _, r := range u.Routes {
			if t.Granted(r.Tool) {
				out = append(out, u.Name)
				break
			}
		}
	}
	return out
}

// complete is POST /v1/tasks/{id}/complete with the handle: complete at
// Valet, forget the credentials whatever Valet answered (they die by
// their deadline anyway).
func (p *Proxy) complete(ctx context.Context, id string, r *http.Request) *http.Response {
	handle, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		return refusal(http.StatusUnauthorized, "handle", "", "send the task's handle as Authorization: Bearer <handle> (or DPoP <handle>)")
	}
	t, _ := p.lookup(handle)
	if t == nil || t.ID != id {
		return refusal(http.StatusUnauthorized, "handle", "", "unknown or ended handle for this task")
	}
	if resp := p.checkBinding(ctx, r, t, handle); resp != nil {
		return resp
	}
	tok := t.secrets().taskToken
	p.end(t, "completed")
	status, raw, err := p.valet(ctx, "/v1/tasks/"+url.PathEscape(id)+"/complete", tok, "", nil)
	if err != nil {
		return refusal(http.StatusServiceUnavailable, "valet", "", "Valet cannot be reached; the proxy forgot the task's credentials, which expire at its deadline")
	}
	return passThrough(status, raw)
}

// valet posts body to one of Valet's routes with a bearer token.
func (p *Proxy) valet(ctx context.Context, path, bearerTok, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.cfg.Valet+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+bearerTok)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := p.cfg.HTTPClient.Do(req)
	if err != nil {
		p.cfg.Logger.Error("proxy: calling Valet", "path", path, "err", err)
		return 0, nil, fmt.Errorf("calling Valet: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("reading Valet's answer: %w", err)
	}
	return resp.StatusCode, raw, nil
}

// passThrough answers with Valet's status and JSON body.
func passThrough(status int, raw []byte) *http.Response {
	if !json.Valid(raw) {
		return refusal(http.StatusBadGateway, "valet", "", fmt.Sprintf("Valet answered %d", status))
	}
	return rawJSON(status, raw)
}

// bearer reads "Bearer <token>" or "DPoP <token>" (RFC 9449 section 7.1:
// the scheme of a DPoP-bound token; the binding is checked, not the
// scheme).
func bearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(h), " ")
	tok = strings.TrimSpace(tok)
	if !ok || !(strings.EqualFold(scheme, "Bearer") || strings.EqualFold(scheme, "DPoP")) || tok == "" {
		return "", false
	}
	return tok, true
}
