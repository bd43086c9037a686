package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/delegation"
	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/internal/requestid"
)

// Config wires the token endpoint. Service, Identity, Once and Issuer are
// required.
type Config struct {
	Service *broker.Service
	// Identity verifies jwt-bearer assertions: the agents' identity
	// tokens, exactly as a declaration's.
	Identity broker.Authenticator
	// Clients are the agents registered for client credentials.
	Clients []Client
	// Once keeps assertion jtis for replay refusal (the broker's Limiter).
	Once broker.Limiter
	// Issuer is Valet's public URL; the token endpoint is Issuer/v1/token.
	Issuer string
	// MaxAssertionLife bounds a client assertion's exp from now (default
	// DefaultMaxAssertionLife).
	MaxAssertionLife time.Duration
	// DPoPNonces, when set, makes every DPoP proof at the token endpoint
	// carry a server nonce (RFC 9449 section 8); every answer hands out the
	// current one in the DPoP-Nonce header.
	DPoPNonces *dpop.Nonces
	Now        func() time.Time
	Logger     *slog.Logger
}

// TokenPath is where the token endpoint is mounted.
const TokenPath = "/v1/token"

// Endpoint is the token endpoint. It is safe for concurrent use.
type Endpoint struct {
	svc        *broker.Service
	assertions AssertionGuard
	clients    *ClientVerifier
	issuer     string
	log        *slog.Logger
	nonces     *dpop.Nonces
}

// New checks cfg and builds the endpoint.
func New(cfg Config) (*Endpoint, error) {
	var missing []string
	for _, m := range []struct {
		name string
		nil  bool
	}{{"service", cfg.Service == nil}, {"identity", cfg.Identity == nil}, {"replay store", cfg.Once == nil}, {"issuer", cfg.Issuer == ""}} {
		if m.nil {
			missing = append(missing, m.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("oauth: %s cannot be empty", strings.Join(missing, ", "))
	}
	issuer := strings.TrimSuffix(cfg.Issuer, "/")
	clients, err := NewClientVerifier(cfg.Clients, []string{issuer, issuer + "/", issuer + TokenPath}, cfg.MaxAssertionLife, cfg.Once, cfg.Now)
	if err != nil {
		return nil, err
	}
	e := &Endpoint{svc: cfg.Service, assertions: AssertionGuard{Identity: cfg.Identity, Once: cfg.Once, Now: cfg.Now}, clients: clients,
		issuer: issuer, log: cfg.Logger, nonces: cfg.DPoPNonces}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	return e, nil
}

// Handler is POST /v1/token: it serves the jwt-bearer and
// client_credentials grants and hands the RFC 8693 token exchange (and a
// request without grant_type or with a body that is not a form, which the
// exchange has always answered) to exchange, unchanged.
func (e *Endpoint) Handler(exchange http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if mt != "application/x-www-form-urlencoded" {
			exchange.ServeHTTP(w, r)
			return
		}
		if err := r.ParseForm(); err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				e.writeError(w, r, &Error{Code: ErrInvalidRequest, Description: "request body is larger than the limit", Status: http.StatusRequestEntityTooLarge, Err: err})
				return
			}
			e.writeError(w, r, &Error{Code: ErrInvalidRequest, Description: "malformed form body", Status: http.StatusBadRequest, Err: err})
			return
		}
		if oerr := e.checkNonce(w, r); oerr != nil {
			e.writeError(w, r, oerr)
			return
		}
		if gt := r.PostForm.Get("grant_type"); gt == "" || gt == delegation.GrantTypeTokenExchange {
			exchange.ServeHTTP(w, r)
			return
		}
		e.serve(w, r)
	})
}

// checkNonce hands out the current DPoP nonce and, when the request has a
// DPoP proof, refuses it unless its nonce is current (RFC 9449 section 8).
// Only the nonce claim is read here; the proof's signature and the rest
// are checked where the proof binds the token, on this same header value.
func (e *Endpoint) checkNonce(w http.ResponseWriter, r *http.Request) *Error {
	if e.nonces == nil {
		return nil
	}
	w.Header().Set(dpop.NonceHeader, e.nonces.Issue())
	proof := r.Header.Get("DPoP")
	if proof == "" {
		return nil
	}
	if len(proof) > dpop.MaxProofBytes {
		return &Error{Code: ErrInvalidDPoPProof, Description: "the DPoP proof is too large", Status: http.StatusBadRequest}
	}
	sig, err := jose.ParseSignedCompact(proof, dpop.Algorithms)
	if err != nil {
		return &Error{Code: ErrInvalidDPoPProof, Description: "the DPoP proof is not a signed JWT", Status: http.StatusBadRequest, Err: err}
	}
	var c struct {
		Nonce string `json:"nonce"`
	}
	if err := json.Unmarshal(sig.UnsafePayloadWithoutVerification(), &c); err != nil || !e.nonces.Valid(c.Nonce) {
		return &Error{Code: ErrUseDPoPNonce, Description: "the DPoP proof must carry the nonce of the DPoP-Nonce response header", Status: http.StatusBadRequest}
	}
	return nil
}

// serve answers a jwt-bearer or client_credentials request.
func (e *Endpoint) serve(w http.ResponseWriter, r *http.Request) {
	req, oerr := decodeRequest(r.PostForm)
	if oerr != nil {
		e.writeError(w, r, oerr)
		return
	}
	p, oerr := e.authenticate(r.Context(), &req)
	if oerr != nil {
		e.writeError(w, r, oerr)
		return
	}
	d := req.decl
	d.Proof, d.Method, d.URL = r.Header.Get("DPoP"), r.Method, e.issuer+r.URL.EscapedPath()
	task, minted, err := e.svc.DeclareWith(r.Context(), verified(p), req.assertion, d)
	if err != nil {
		e.writeError(w, r, fromBroker(err, req.grant, req.how))
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, tokenResponse(task, minted, d))
}

// authenticate verifies the grant's assertion (jwt-bearer) or the client's
// (client_credentials), refusing a replayed jti, and for a client checks
// that it may use the template asked for. A jwt-bearer request that named
// no task takes it from the assertion's scope claim.
func (e *Endpoint) authenticate(ctx context.Context, req *tokenRequest) (broker.Principal, *Error) {
	code, status, auth := ErrInvalidGrant, http.StatusBadRequest, broker.Authenticator(e.assertions)
	if req.grant == GrantClientCredentials {
		code, status, auth = ErrInvalidClient, http.StatusUnauthorized, e.clients
	}
	p, err := auth.Authenticate(ctx, req.assertion)
	var oerr *Error
	switch {
	case errors.Is(err, broker.ErrUnavailable):
		return p, &Error{Code: ErrTemporarilyUnavailable, Description: "a dependency is unavailable; nothing was issued", Status: http.StatusServiceUnavailable, Err: err}
	case err != nil:
		e.log.WarnContext(ctx, "token request assertion rejected", "grant_type", req.grant, "token_sha256", broker.TokenHash(req.assertion), "reason", err.Error())
		return p, &Error{Code: code, Description: "unable to verify the assertion", Status: status, Err: err}
	}
	if req.grant != GrantClientCredentials {
		if req.scopeInAssertion {
			scope, _ := p.Claims["scope"].(string)
			resources := req.decl.Resources
			if req.decl, oerr = decodeScope(scope, ""); oerr != nil {
				return p, oerr
			}
			req.decl.Resources = resources
		}
		return p, nil
	}
	c, _ := e.clients.Client(p.Subject)
	switch {
	case req.clientID != "" && req.clientID != c.ID:
		return p, &Error{Code: ErrInvalidClient, Description: "client_id does not match the client assertion", Status: http.StatusUnauthorized}
	case !c.allows(req.decl.Template):
		return p, &Error{Code: ErrUnauthorizedClient, Description: fmt.Sprintf("client %q may not use template %q", c.ID, broker.Bound(req.decl.Template, 128)), Status: http.StatusBadRequest}
	}
	return p, nil
}

// tokenResponse is the RFC 6749 section 5.1 answer, with the granted
// authorization_details (RFC 9396 section 7), the scope in the same terms
// as asked, and the task id.
func tokenResponse(task broker.Task, minted []broker.Minted, d broker.Declaration) map[string]any {
	m := minted[0] // the task token comes first
	tokenType := "Bearer"
	if task.JKT != "" {
		tokenType = "DPoP"
	}
	ttl := int64(task.Deadline.Sub(task.CreatedAt) / time.Second)
	detail := map[string]any{"type": DetailsType, "template": task.Template, "intent": task.Intent, "tools": task.Tools, "ttl": ttl}
	if len(d.Context) > 0 {
		detail["context"] = d.Context
	}
	if len(d.Resources) > 0 {
		detail["locations"] = d.Resources
	}
	return map[string]any{
		"access_token":          m.Material["access_token"],
		"token_type":            tokenType,
		"expires_in":            m.ExpiresAt.Unix() - m.IssuedAt.Unix(), // as exp - iat in the token
		"scope":                 strings.Join(append([]string{TemplateScope + task.Template}, task.Tools...), " "),
		"authorization_details": []any{detail},
		"task_id":               task.ID,
	}
}

// writeError answers an RFC 6749 section 5.2 error; the cause goes to the
// log only, at Warn for client errors and Error for Valet's.
func (e *Endpoint) writeError(w http.ResponseWriter, r *http.Request, oe *Error) {
	level := slog.LevelWarn
	if oe.Status >= 500 {
		level = slog.LevelError
	}
	attrs := []slog.Attr{slog.String("request_id", requestid.From(r.Context())), slog.String("path", TokenPath),
		slog.Int("status", oe.Status), slog.String("error", oe.Code), slog.String("error_description", oe.Description)}
	if oe.Err != nil {
		attrs = append(attrs, slog.String("cause", broker.Bound(oe.Err.Error(), broker.MaxAuditString)))
	}
	e.log.LogAttrs(r.Context(), level, "token request refused", attrs...)
	w.Header().Set("Cache-Control", "no-store")
	switch oe.Status {
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "1")
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, oe.Status, errorBody{Error: oe.Code, Description: broker.Bound(oe.Description, broker.MaxAuditString), RequestID: requestid.From(r.Context())})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
