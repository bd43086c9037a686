// Package httpapi is Valet's HTTP surface: every route in one function,
// thin handlers over broker.Service (and stepup.Service for sensitive
// actions), and one writeError.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/wire"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/delegation"
	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/internal/requestid"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/renewal"
	"github.com/valet-dev/valet/ssf"
	"github.com/valet-dev/valet/stepup"
	"github.com/valet-dev/valet/toolevents"
)

// Options wires the HTTP layer. Service, Clients, StepUp, Events and
// Delegation are required.
type Options struct {
	Service *broker.Service
	// Clients authenticates the tool servers calling introspection,
	// revocation, action consumption and the revocation feed.
	Clients *clientauth.Authorizer
	// StepUp serves sensitive actions: action tokens and approvals.
	StepUp *stepup.Service
	// Delegation answers token exchanges (POST /v1/token).
	Delegation *delegation.Service
	// Renewal renews tasks (POST /v1/tasks/{id}/renew); required.
	Renewal *renewal.Service
	// Issuer is Valet's public URL (the iss of its tokens).
	Issuer string
	// JWKS is the published key set document.
	JWKS []byte
	// SigningAlgs are the algorithms of the published keys.
	SigningAlgs []string
	// OpenAPI is the contract served at /openapi.yaml.
	OpenAPI []byte
	// Ready checks, beyond the ledger, for /readyz (keys loaded, IdPs).
	Ready []func(context.Context) error
	// DevIdP, when set, is mounted at /dev: the development issuer of
	// `valet dev` (discovery, JWKS, POST /dev/token). Never set in
	// production.
	DevIdP http.Handler
	// MaxBodyBytes caps request bodies; default 64 KiB.
	MaxBodyBytes int64
	// RequestTimeout bounds each request; default 10 s.
	RequestTimeout time.Duration
	Logger         *slog.Logger
	// Events serves tool-call reports and listings (events.go); required.
	Events *toolevents.Service
	// Admin, Feed and Metrics, when set, add the admin API (with Events'
	// rollback), the revocation feed and /metrics (admin.go).
	Admin   *incident.Admin
	Feed    broker.Feed
	Metrics Metrics
	// FeedHub serves the revocation stream's followers from one reader;
	// when nil and Feed is set, one over Feed with default limits.
	FeedHub *fanout.Hub
	// OAuth, when set, serves the jwt-bearer and client_credentials grants
	// at POST /v1/token beside the token exchange, and adds its fields to
	// the metadata.
	OAuth *oauth.Endpoint
	// SSF, when set with Admin, serves the OpenID Shared Signals
	// transmitter; SSFReceiver, when set, takes SETs pushed by the
	// configured transmitters (ssf.go).
	SSF         *ssf.Transmitter
	SSFReceiver http.Handler
}

// api holds the handlers' dependencies.
type api struct {
	svc     *broker.Service
	steps   *stepup.Service
	opts    Options
	log     *slog.Logger
	streams streams
}

// Handler builds the whole HTTP surface.
func Handler(opts Options) (_ http.Handler, err error) {
	if opts.Service == nil {
		return nil, errors.New("httpapi: service cannot be nil")
	}
	if opts.Clients == nil {
		return nil, errors.New("httpapi: client authorizer cannot be nil")
	}
	if opts.StepUp == nil {
		return nil, errors.New("httpapi: step-up service cannot be nil")
	}
	if opts.Events == nil {
		return nil, errors.New("httpapi: events cannot be nil")
	}
	if opts.Delegation == nil {
		return nil, errors.New("httpapi: delegation cannot be nil")
	}
	if opts.Renewal == nil {
		return nil, errors.New("httpapi: renewal cannot be nil")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 64 << 10
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Feed != nil && opts.FeedHub == nil {
		if opts.FeedHub, err = fanout.New(opts.Feed, fanout.Limits{}, opts.Logger); err != nil {
			return nil, err
		}
	}
	a := &api{svc: opts.Service, steps: opts.StepUp, opts: opts, log: opts.Logger, streams: streams{done: make(chan struct{})}}

	r := chi.NewRouter()
	r.Use(a.requestContext, a.accessLog, a.recoverer,
		middleware.RequestSize(opts.MaxBodyBytes), a.timeout(opts.RequestTimeout))
	if opts.Metrics != nil {
		r.Use(opts.Metrics.Middleware)
	}
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		a.writeError(w, r, broker.Errorf(broker.CodeNotFound, "no route for %s %s", broker.Bound(r.Method, broker.MaxLoggedPath), boundedPath(r)))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		a.writeError(w, r, &broker.Error{Code: codeMethodNotAllowed, Message: "method " + broker.Bound(r.Method, broker.MaxLoggedPath) + " is not allowed on " + boundedPath(r)})
	})

	r.Get("/healthz", a.healthz)
	r.Get("/readyz", a.readyz)
	r.Get("/openapi.yaml", a.openapi)
	r.Get("/.well-known/jwks.json", a.jwks)
	r.Get("/.well-known/oauth-authorization-server", a.metadata)

	r.Post("/v1/tasks", a.declare)
	r.Get("/v1/tasks/{id}", a.getTask)
	r.Post("/v1/tasks/{id}/complete", a.complete)
	r.Post("/v1/tasks/{id}/renew", a.renew)
	r.Post("/v1/introspect", a.introspect)
	r.Post("/v1/revoke", a.revoke)
	r.Post("/v1/token", a.tokenEndpoint().ServeHTTP)
	a.incidentRoutes(r)
	a.ssfRoutes(r)
	r.Post("/v1/tasks/{id}/actions", a.requestAction)
	r.Get("/v1/tasks/{id}/actions/{approval_id}", a.actionStatus)
	r.Post("/v1/actions/consume", a.consumeAction)
	r.Post("/v1/tasks/{id}/events", a.reportEvent)
	r.Get("/v1/tasks/{id}/events", a.listEvents)
	r.Get("/v1/approvals", a.listApprovals)
	r.Post("/v1/approvals/{id}/approve", a.decideApproval(true))
	r.Post("/v1/approvals/{id}/deny", a.decideApproval(false))
	r.Post("/v1/approval-requirements/clear", a.clearRequirement)

	if opts.DevIdP != nil {
		r.Mount("/dev", http.StripPrefix("/dev", opts.DevIdP))
	}
	return r, nil
}

func (a *api) accessLog(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		start := time.Now()
		next.ServeHTTP(ww, r)
		a.log.LogAttrs(r.Context(), slog.LevelDebug, "http request",
			slog.String("request_id", requestid.From(r.Context())),
			slog.String("method", broker.Bound(r.Method, broker.MaxLoggedPath)), slog.String("path", boundedPath(r)),
			slog.Int("status", ww.Status()), slog.Duration("took", time.Since(start)))
	})
}

func (a *api) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (a *api) readyz(w http.ResponseWriter, r *http.Request) {
	checks := append([]func(context.Context) error{a.svc.Ready}, a.opts.Ready...)
	for _, check := range checks {
		if err := check(r.Context()); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	body := map[string]string{"status": "ready"}
	if warn := a.svc.ReadyWarning(); warn != "" {
		body["warning"] = warn // logged at Error once, when it was seen
	}
	writeJSON(w, http.StatusOK, body)
}

func (a *api) openapi(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(a.opts.OpenAPI)
}

func (a *api) jwks(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(a.opts.JWKS)
}

// metadata is the RFC 8414 authorization server metadata.
func (a *api) metadata(w http.ResponseWriter, r *http.Request) {
	base := strings.TrimSuffix(a.opts.Issuer, "/")
	md := map[string]any{
		"issuer":                   a.opts.Issuer,
		"jwks_uri":                 base + "/.well-known/jwks.json",
		"introspection_endpoint":   base + "/v1/introspect",
		"revocation_endpoint":      base + "/v1/revoke",
		"response_types_supported": []string{},
		"introspection_endpoint_auth_methods_supported": []string{"client_secret_basic", "bearer"},
		"revocation_endpoint_auth_methods_supported":    []string{"client_secret_basic", "bearer"},
		"service_documentation":                         base + "/openapi.yaml",
	}
	if a.opts.OAuth != nil {
		maps.Copy(md, a.opts.OAuth.Metadata())
	}
	writeJSON(w, http.StatusOK, md)
}

// tokenEndpoint is POST /v1/token: the OAuth grants when configured, each
// handing the token exchange to a.token.
func (a *api) tokenEndpoint() http.Handler {
	if a.opts.OAuth == nil {
		return http.HandlerFunc(a.token)
	}
	return a.opts.OAuth.Handler(http.HandlerFunc(a.token))
}

func (a *api) declare(w http.ResponseWriter, r *http.Request) {
	if err := requireContentType(r, "application/json"); err != nil {
		a.writeError(w, r, err)
		return
	}
	d, err := wire.DecodeDeclaration(r.Body)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	d.Proof, d.Method, d.URL = r.Header.Get("DPoP"), r.Method, a.requestURL(r)
	task, minted, err := a.svc.Declare(r.Context(), bearer(r), d)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/tasks/"+task.ID)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusCreated, declareResponse{Task: task, Credentials: credentialsJSON(minted)})
}

type declareResponse struct {
	Task        broker.Task      `json:"task"`
	Credentials []map[string]any `json:"credentials"`
}

// credentialsJSON puts each credential's id, kind and expiry beside the
// material its issuer hands to the client.
func credentialsJSON(ms []broker.Minted) []map[string]any {
	out := make([]map[string]any, len(ms))
	for i, m := range ms {
		c := map[string]any{"id": m.ID, "kind": m.Kind, "expires_at": m.ExpiresAt.UTC().Format(time.RFC3339)}
		for k, v := range m.Material {
			if _, taken := c[k]; !taken {
				c[k] = v
			}
		}
		out[i] = c
	}
	return out
}

func (a *api) getTask(w http.ResponseWriter, r *http.Request) {
	task, err := a.svc.Task(r.Context(), a.taskRequest(r))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"task": task})
}

func (a *api) complete(w http.ResponseWriter, r *http.Request) {
	task, err := a.svc.Complete(r.Context(), a.taskRequest(r))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"task": task})
}

// renew is POST /v1/tasks/{id}/renew: the agent's identity token and an
// optional ttl_seconds; the answer is shaped as a declaration's.
func (a *api) renew(w http.ResponseWriter, r *http.Request) {
	if err := requireContentType(r, "application/json"); err != nil {
		a.writeError(w, r, err)
		return
	}
	req, err := wire.DecodeRenewal(r.Body, chi.URLParam(r, "id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	task, minted, err := a.opts.Renewal.Renew(r.Context(), bearer(r), req)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, declareResponse{Task: task, Credentials: credentialsJSON(minted)})
}

// taskRequest reads the caller of GET /v1/tasks/{id} and its completion:
// a bearer (or, for a DPoP-bound task token, "Authorization: DPoP") and the
// DPoP proof its binding needs.
func (a *api) taskRequest(r *http.Request) broker.TaskRequest {
	return broker.TaskRequest{ID: chi.URLParam(r, "id"), Bearer: taskToken(r),
		Proof: r.Header.Get("DPoP"), Method: r.Method, URL: a.requestURL(r)}
}

// introspect is RFC 7662.
func (a *api) introspect(w http.ResponseWriter, r *http.Request) {
	token, _, err := a.tokenForm(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	in, err := a.svc.Introspect(r.Context(), token)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if !in.Active {
		writeJSON(w, http.StatusOK, map[string]any{"active": false})
		return
	}
	c := in.Claims
	body := map[string]any{
		"active": true, "token_type": "Bearer", "client_id": c.ClientID, "sub": c.Subject,
		"aud": c.Audience, "iss": a.opts.Issuer, "exp": c.ExpiresAt.Unix(), "iat": c.IssuedAt.Unix(),
		"jti": c.ID, "task_id": c.TaskID, "template": c.Template, "tools": c.Tools,
	}
	if c.Scope != "" {
		body["scope"] = c.Scope
	}
	if len(c.ActionTools) > 0 {
		body["action_tools"] = c.ActionTools
	}
	addAgentClaims(body, c)
	writeJSON(w, http.StatusOK, body)
}

// revoke is RFC 7009: 200 with an empty body once the token is dead.
func (a *api) revoke(w http.ResponseWriter, r *http.Request) {
	token, caller, err := a.tokenForm(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.svc.RevokeToken(r.Context(), token, r.PostForm.Get("token_type_hint"), caller); err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// tokenForm authenticates the caller of introspection or revocation and
// returns the form's token parameter and the caller's name.
func (a *api) tokenForm(r *http.Request) (token, caller string, err error) {
	id, secret, basic := r.BasicAuth()
	var bt string
	if !basic {
		id, secret, bt = "", "", bearer(r)
		if bt == "" {
			return "", "", &broker.Error{Code: broker.CodeUnauthenticated, Message: "client authentication required (HTTP Basic or Bearer)"}
		}
	}
	if caller, err = a.opts.Clients.Authorize(r.Context(), id, secret, bt); err != nil {
		return "", "", err
	}
	if err := requireContentType(r, "application/x-www-form-urlencoded"); err != nil {
		return "", "", err
	}
	if err := r.ParseForm(); err != nil {
		return "", "", &broker.Error{Code: broker.CodeInvalid, Message: "malformed form body", Err: err}
	}
	if token = r.PostForm.Get("token"); token == "" {
		return "", "", &broker.Error{Code: broker.CodeInvalid, Message: "the token parameter is required", Field: "token"}
	}
	return token, caller, nil
}

// bearer returns the token of an "Authorization: Bearer" header (an
// identity or admin token), or "".
func bearer(r *http.Request) string { t, _ := dpop.AccessToken(r, dpop.Bearer); return t }

// taskToken returns a task token sent as "Authorization: Bearer" or, for a
// DPoP-bound task, "Authorization: DPoP"; or "".
func taskToken(r *http.Request) string { t, _ := dpop.AccessToken(r, dpop.Bearer, dpop.DPoP); return t }

func requireContentType(r *http.Request, want string) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != want {
		return &broker.Error{Code: broker.CodeUnsupportedType, Message: "Content-Type must be " + want}
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
