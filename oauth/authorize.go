package oauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/requestid"
	"github.com/valet-dev/valet/renewal"
)

// The interactive half: the authorization code grant with PKCE (RFC 6749
// section 4.1, RFC 7636, S256 only) for MCP hosts acting for a person.
// Valet is not an identity provider: GET AuthorizePath checks the client
// and its request, then sends the person to the upstream OIDC provider
// with Valet's own PKCE, state and nonce; CallbackPath takes the ID token
// back; the person consents once per client and template (ConsentPath);
// the client gets a one-time code at its exact redirect URI, with RFC 9207
// iss in every answer. At the token endpoint the code becomes a task on
// behalf of the person (sub the person, act the client), declared through
// Service.DeclareWith like any other, and a refresh token that renews that
// task (renewal.Service.RenewAs) and rotates on every use.

// Paths of the interactive endpoints.
const (
	AuthorizePath = "/v1/authorize"
	CallbackPath  = "/v1/authorize/callback"
	ConsentPath   = "/v1/authorize/consent"
)

// Grant types of the interactive half.
const (
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
)

// Errors of the authorization endpoint (RFC 6749 section 4.1.2.1).
const (
	ErrAccessDenied            = "access_denied"
	ErrUnsupportedResponseType = "unsupported_response_type"
)

// Upstream is the OIDC provider people sign in at; identity.Login is one
// (internal/server adapts it). Valet's callback URL (CallbackPath), client
// id and secret there are its configuration.
type Upstream interface {
	// Start begins a sign-in with a fresh state, nonce and PKCE verifier:
	// what to keep, and where to send the person.
	Start() (UpstreamState, string)
	// Finish completes it from the callback's query: state and iss
	// checked, the code traded with the verifier, the ID token verified
	// (signature, issuer, audience, times, nonce). It answers the person
	// and the ID token.
	Finish(ctx context.Context, st UpstreamState, q url.Values) (broker.Principal, string, error)
}

// UpstreamState is what Start hands Finish (identity.LoginState).
type UpstreamState struct {
	State    string `json:"state"`
	Nonce    string `json:"nonce"`
	Verifier string `json:"verifier"`
}

// Renewer renews a task for the refresh_token grant; renewal.Service is
// one.
type Renewer interface {
	RenewAs(ctx context.Context, p broker.Principal, r renewal.Request) (broker.Task, []broker.Minted, error)
}

// InteractiveConfig turns on the authorization code grant. Upstream and
// Store are required.
type InteractiveConfig struct {
	Upstream Upstream
	Store    Store
	// Clients are the configured public clients; CIMD adds those that
	// describe themselves.
	Clients []PublicClient
	CIMD    CIMDConfig
	// Renewer, when set, makes the code grant hand out refresh tokens.
	Renewer Renewer
	// CodeTTL is a code's life (default 60 s); LoginTTL how long a person
	// has to sign in and consent (default 10 min); ConsentTTL how long a
	// consent is remembered (default 90 days).
	CodeTTL, LoginTTL, ConsentTTL time.Duration
	// LoginSealKeys (32 bytes each) seal a sign-in under way into its
	// browser cookie (seal.go): the first seals, every one opens. All
	// replicas need the same keys; DeriveLoginSealKey makes one from
	// shared key material. Empty: a random key of this process, which is
	// right for one broker only.
	LoginSealKeys [][]byte
}

// interactive is the authorization code grant's state.
type interactive struct {
	up       Upstream
	store    Store
	clients  map[string]PublicClient
	cimd     *cimdFetcher
	renewer  Renewer
	codeTTL  time.Duration
	loginTTL time.Duration
	consent  time.Duration
	now      func() time.Time
	secure   bool // the issuer is https: cookies are Secure
	sealer   *loginSealer
}

func newInteractive(cfg *InteractiveConfig, issuer string, now func() time.Time) (*interactive, error) {
	if cfg.Upstream == nil || cfg.Store == nil {
		return nil, errors.New("oauth: the authorization code grant needs an upstream provider and a store")
	}
	in := &interactive{up: cfg.Upstream, store: cfg.Store, clients: map[string]PublicClient{}, renewer: cfg.Renewer,
		codeTTL: cfg.CodeTTL, loginTTL: cfg.LoginTTL, consent: cfg.ConsentTTL, now: now, secure: strings.HasPrefix(issuer, "https://")}
	if in.codeTTL <= 0 {
		in.codeTTL = time.Minute
	}
	if in.loginTTL <= 0 {
		in.loginTTL = 10 * time.Minute
	}
	if in.consent <= 0 {
		in.consent = 90 * 24 * time.Hour
	}
	sealer, err := newLoginSealer(cfg.LoginSealKeys)
	if err != nil {
		return nil, err
	}
	in.sealer = sealer
	var errs []error
	for _, c := range cfg.Clients {
		switch {
		case c.ID == "" || strings.ContainsFunc(c.ID, func(r rune) bool { return r <= 0x20 || r == 0x7f }):
			errs = append(errs, fmt.Errorf("public client id %q must be non-empty, without spaces or control characters", c.ID))
		case len(c.RedirectURIs) == 0:
			errs = append(errs, fmt.Errorf("public client %q has no redirect_uris", c.ID))
		case len(c.Templates) == 0:
			errs = append(errs, fmt.Errorf("public client %q may use no template: list at least one", c.ID))
		}
		for _, r := range c.RedirectURIs {
			if err := checkRedirectURI(r); err != nil {
				errs = append(errs, fmt.Errorf("public client %q: %w", c.ID, err))
			}
		}
		if _, dup := in.clients[c.ID]; dup {
			errs = append(errs, fmt.Errorf("public client %q is registered twice", c.ID))
		}
		in.clients[c.ID] = c
	}
	if cfg.CIMD.Enabled {
		in.cimd = newCIMDFetcher(cfg.CIMD, now)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("oauth: %w", err)
	}
	return in, nil
}

// client resolves a client_id: a configured client, else a CIMD one.
// errCIMD and errUnknownClient are the client's fault.
func (in *interactive) client(ctx context.Context, id string) (PublicClient, error) {
	if c, ok := in.clients[id]; ok {
		return c, nil
	}
	if in.cimd != nil && strings.HasPrefix(id, "https://") {
		return in.cimd.clientOf(ctx, id)
	}
	return PublicClient{}, errUnknownClient
}

var errUnknownClient = errors.New("unknown client")

// authzRequest is one authorization in flight, kept in the Store from the
// authorization request to the code's redemption. Secrets in it (the
// upstream verifier, the person's ID token) live at most LoginTTL plus
// CodeTTL, under keys that are hashes.
type authzRequest struct {
	ClientID    string         `json:"client_id"`
	ClientName  string         `json:"client_name,omitempty"`
	RedirectURI string         `json:"redirect_uri"`
	Challenge   string         `json:"code_challenge"`
	State       string         `json:"state"`
	Resources   []string       `json:"resources,omitempty"`
	Template    string         `json:"template"`
	Intent      string         `json:"intent"`
	Tools       []string       `json:"tools"`
	TTLSeconds  int64          `json:"ttl_seconds,omitempty"`
	Context     map[string]any `json:"context,omitempty"`
	How         via            `json:"how"`
	Binding     string         `json:"binding"` // SHA-256 of the browser cookie
	Nonce       string         `json:"nonce,omitempty"`
	Verifier    string         `json:"verifier,omitempty"`
	IDToken     string         `json:"id_token,omitempty"`
	Person      string         `json:"person,omitempty"` // issuer name/subject
	// User is the person as the upstream sign-in verified them (claims
	// included): a refresh checks the template's users rule, as it is
	// then, against it.
	User *personRecord `json:"user,omitempty"`
}

// personRecord is a verified person kept for refreshes.
type personRecord struct {
	Issuer    string         `json:"issuer"`
	IssuerURL string         `json:"issuer_url,omitempty"`
	Subject   string         `json:"subject"`
	Claims    map[string]any `json:"claims,omitempty"`
}

func (p *personRecord) principal() *broker.Principal {
	if p == nil {
		return nil
	}
	return &broker.Principal{Issuer: p.Issuer, IssuerURL: p.IssuerURL, Subject: p.Subject, Claims: p.Claims}
}

func (a authzRequest) declaration() broker.Declaration {
	return broker.Declaration{Template: a.Template, Intent: a.Intent, Tools: a.Tools, TTL: time.Duration(a.TTLSeconds) * time.Second,
		Context: a.Context, Resources: a.Resources, SubjectToken: a.IDToken}
}

// authzError is a refusal at the authorization endpoint: redirected to
// the client when its redirect URI is known good, else answered directly.
type authzError struct {
	*Error
	redirect bool
}

const bindingCookie = "valet_authz"

// Authorize is GET AuthorizePath.
func (e *Endpoint) Authorize(w http.ResponseWriter, r *http.Request) {
	in := e.interactive
	q := r.URL.Query()
	for k, v := range q {
		if len(v) > 1 && k != "resource" {
			e.authzFail(w, r, nil, &authzError{Error: refuse(ErrInvalidRequest, "parameter "+boundKey(k)+" is given more than once")})
			return
		}
	}
	clientID := q.Get("client_id")
	if clientID == "" {
		e.authzFail(w, r, nil, &authzError{Error: refuse(ErrInvalidRequest, "client_id is required")})
		return
	}
	c, err := in.client(r.Context(), clientID)
	if err != nil {
		e.authzFail(w, r, nil, &authzError{Error: clientError(err)})
		return
	}
	redirect := q.Get("redirect_uri")
	if redirect == "" || !slices.Contains(c.RedirectURIs, redirect) {
		e.authzFail(w, r, nil, &authzError{Error: refuse(ErrInvalidRequest, "redirect_uri is required and must be one the client registered, exactly")})
		return
	}
	a := authzRequest{ClientID: c.ID, ClientName: c.Name, RedirectURI: redirect, State: q.Get("state")}
	if oerr := in.checkRequest(q, c, &a, e); oerr != nil {
		e.authzFail(w, r, &a, &authzError{Error: oerr, redirect: true})
		return
	}
	// Nothing is stored until the person signed in upstream: the sign-in
	// travels sealed in its cookie (seal.go), and the cookie's value is
	// the browser binding of every later step.
	up, upURL := in.up.Start()
	a.Nonce, a.Verifier = up.Nonce, up.Verifier
	binding, err := in.sealer.seal(sealedLogin{Request: a, UpState: hashHex(up.State), Expires: in.now().Add(in.loginTTL)})
	if err != nil {
		oerr := &Error{Code: ErrServerError, Description: "internal error", Status: http.StatusInternalServerError, Err: err}
		if errors.Is(err, errSignInTooLarge) {
			oerr = refuse(ErrInvalidRequest, "the authorization request is too large to carry through the sign-in: ask for fewer tools, resources or less context")
		}
		e.authzFail(w, r, &a, &authzError{Error: oerr, redirect: true})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: bindingCookie, Value: binding, Path: AuthorizePath, MaxAge: int(in.loginTTL / time.Second),
		HttpOnly: true, Secure: in.secure, SameSite: http.SameSiteLaxMode})
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, upURL, http.StatusFound)
}

// checkRequest checks everything of an authorization request after the
// client and its redirect URI, filling a.
func (in *interactive) checkRequest(q url.Values, c PublicClient, a *authzRequest, e *Endpoint) *Error {
	switch {
	case q.Get("response_type") != "code":
		return refuse(ErrUnsupportedResponseType, "response_type must be code")
	case a.State == "":
		return refuse(ErrInvalidRequest, "state is required")
	case len(a.State) > 512:
		return refuse(ErrInvalidRequest, "state must be at most 512 bytes")
	case q.Get("code_challenge") == "":
		return refuse(ErrInvalidRequest, "code_challenge is required (PKCE, S256)")
	case q.Get("code_challenge_method") != "S256":
		return refuse(ErrInvalidRequest, "code_challenge_method must be S256; plain is not accepted")
	case !validChallenge(q.Get("code_challenge")):
		return refuse(ErrInvalidRequest, "code_challenge must be the 43-character base64url SHA-256 of the verifier")
	}
	a.Challenge = q.Get("code_challenge")
	resources, oerr := decodeResources(q["resource"])
	if oerr != nil {
		return oerr
	}
	details, scope := q.Get("authorization_details"), q.Get("scope")
	var d broker.Declaration
	switch {
	case details != "" && scope != "":
		return refuse(ErrInvalidRequest, "give authorization_details or scope, not both")
	case details != "":
		a.How = viaDetails
		d, oerr = decodeDetails(details)
	default:
		a.How = viaScope
		if !strings.Contains(scope, TemplateScope) {
			tmpl, oerr := e.templateFor(resources, c)
			if oerr != nil {
				return oerr
			}
			scope = TemplateScope + tmpl + " " + scope
		}
		intent := "OAuth authorization of " + broker.Bound(c.ID, 256) + " for scope " + broker.Bound(scope, 512)
		d, oerr = decodeScope(scope, intent)
	}
	if oerr != nil {
		return oerr
	}
	if !c.allows(d.Template) {
		return refuse(ErrUnauthorizedClient, fmt.Sprintf("client %s may not use template %q", broker.QuoteUntrusted(broker.Bound(c.ID, 128)), broker.Bound(d.Template, 128)))
	}
	tmpl, ok := e.svc.Templates().Get(d.Template)
	if !ok {
		return refuse(ErrInvalidScope, fmt.Sprintf("template %q does not exist", broker.Bound(d.Template, 128)))
	}
	// What the template can never grant is refused before anyone signs
	// in; the rest of the policy decides at the token endpoint.
	for _, tool := range d.Tools {
		if _, sensitive := tmpl.SensitiveTool(tool); !sensitive && !tmpl.AllowsTool(tool) {
			return refuse(ErrInvalidScope, fmt.Sprintf("template %q does not allow tool %q", tmpl.Name, broker.Bound(tool, 128)))
		}
	}
	for _, res := range resources {
		if !slices.Contains(tmpl.Audiences, res) {
			return refuse(ErrInvalidTarget, fmt.Sprintf("template %q does not serve resource %s", tmpl.Name, broker.QuoteUntrusted(res)))
		}
	}
	a.Resources, a.Template, a.Intent, a.Tools, a.Context = resources, d.Template, d.Intent, d.Tools, d.Context
	a.TTLSeconds = int64(d.TTL / time.Second)
	return nil
}

// templateFor picks the template of a request whose scope names none: the
// one template the client may use whose audiences list every requested
// resource.
func (e *Endpoint) templateFor(resources []string, c PublicClient) (string, *Error) {
	if len(resources) == 0 {
		return "", refuse(ErrInvalidScope, "a scope without "+TemplateScope+"<name> needs a resource to choose the template by")
	}
	var found []string
	set := e.svc.Templates()
	for _, name := range set.Names() {
		t, _ := set.Get(name)
		if c.allows(name) && !slices.ContainsFunc(resources, func(r string) bool { return !slices.Contains(t.Audiences, r) }) {
			found = append(found, name)
		}
	}
	if len(found) != 1 {
		return "", refuse(ErrInvalidScope, fmt.Sprintf("%d templates serve that resource for this client: name one as %s<name>", len(found), TemplateScope))
	}
	return found[0], nil
}

// Callback is GET CallbackPath: the upstream provider's answer.
func (e *Endpoint) Callback(w http.ResponseWriter, r *http.Request) {
	in := e.interactive
	q := r.URL.Query()
	upstate := q.Get("state")
	if upstate == "" || len(upstate) > 256 {
		e.authzFail(w, r, nil, &authzError{Error: refuse(ErrInvalidRequest, "the sign-in answer has no state")})
		return
	}
	cookie, err := r.Cookie(bindingCookie)
	if err != nil {
		e.authzFail(w, r, nil, &authzError{Error: refuse(ErrInvalidRequest, "this sign-in was started in another browser, or its cookie is gone")})
		return
	}
	l, ok := in.sealer.open(cookie.Value, in.now())
	if !ok || subtle.ConstantTimeCompare([]byte(l.UpState), []byte(hashHex(upstate))) != 1 {
		e.authzFail(w, r, nil, &authzError{Error: refuse(ErrInvalidRequest, "this sign-in is unknown, expired, or was started in another browser")})
		return
	}
	a := l.Request
	a.Binding = hashHex(cookie.Value)
	if upErr := q.Get("error"); upErr != "" {
		e.authzFail(w, r, &a, &authzError{Error: refuse(ErrAccessDenied, "the sign-in at the identity provider did not succeed"), redirect: true})
		return
	}
	person, idToken, err := in.up.Finish(r.Context(), UpstreamState{State: upstate, Nonce: a.Nonce, Verifier: a.Verifier}, q)
	if err != nil || person.Subject == "" {
		e.log.WarnContext(r.Context(), "upstream sign-in refused", "reason", broker.Bound(fmt.Sprint(err), broker.MaxAuditString))
		oerr := refuse(ErrAccessDenied, "the sign-in could not be verified")
		if errors.Is(err, broker.ErrUnavailable) {
			oerr = unavailable(err)
		}
		e.authzFail(w, r, &a, &authzError{Error: oerr, redirect: true})
		return
	}
	a.IDToken, a.Person, a.Verifier, a.Nonce = idToken, person.Issuer+"/"+person.Subject, "", ""
	a.User = &personRecord{Issuer: person.Issuer, IssuerURL: person.IssuerURL, Subject: person.Subject, Claims: person.Claims}
	if _, err := in.store.Get(r.Context(), in.consentKey(a)); err == nil {
		e.issueCode(w, r, a)
		return
	} else if !errors.Is(err, broker.ErrNotFound) {
		e.authzFail(w, r, &a, &authzError{Error: unavailable(err), redirect: true})
		return
	}
	ask := randomToken()
	if err := in.put(r.Context(), "ask:"+hashHex(ask), a, in.now().Add(in.loginTTL)); err != nil {
		e.authzFail(w, r, &a, &authzError{Error: unavailable(err), redirect: true})
		return
	}
	renderConsent(w, a, ask)
}

// Consent is POST ConsentPath: the person's answer to the consent page.
func (e *Endpoint) Consent(w http.ResponseWriter, r *http.Request) {
	in := e.interactive
	if err := r.ParseForm(); err != nil {
		e.authzFail(w, r, nil, &authzError{Error: refuse(ErrInvalidRequest, "malformed form body")})
		return
	}
	ask := r.PostForm.Get("consent")
	if ask == "" || len(ask) > 256 {
		e.authzFail(w, r, nil, &authzError{Error: refuse(ErrInvalidRequest, "consent is required")})
		return
	}
	var a authzRequest
	if oerr := in.take(r.Context(), "ask:"+hashHex(ask), &a); oerr != nil {
		e.authzFail(w, r, nil, &authzError{Error: oerr})
		return
	}
	if !in.bound(r, a) {
		e.authzFail(w, r, nil, &authzError{Error: refuse(ErrInvalidRequest, "this consent was asked in another browser")})
		return
	}
	if r.PostForm.Get("decision") != "allow" {
		e.authzFail(w, r, &a, &authzError{Error: refuse(ErrAccessDenied, "the person did not consent"), redirect: true})
		return
	}
	if _, err := in.store.Put(r.Context(), in.consentKey(a), []byte(`{"given":true}`), in.now().Add(in.consent)); err != nil {
		e.authzFail(w, r, &a, &authzError{Error: unavailable(err), redirect: true})
		return
	}
	e.issueCode(w, r, a)
}

// consentKey names the consent of a's person for a's client and template.
func (in *interactive) consentKey(a authzRequest) string {
	return "consent:" + hashHex(a.Person+"\x00"+a.ClientID+"\x00"+a.Template)
}

// issueCode stores a one-time code for a and sends the person back to the
// client with it.
func (e *Endpoint) issueCode(w http.ResponseWriter, r *http.Request, a authzRequest) {
	in := e.interactive
	code := randomToken()
	a.Binding = ""
	if err := in.put(r.Context(), "code:"+hashHex(code), a, in.now().Add(in.codeTTL)); err != nil {
		e.authzFail(w, r, &a, &authzError{Error: unavailable(err), redirect: true})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: bindingCookie, Value: "", Path: AuthorizePath, MaxAge: -1, HttpOnly: true, Secure: in.secure, SameSite: http.SameSiteLaxMode})
	e.redirectBack(w, r, a, url.Values{"code": {code}})
}

// redirectBack sends the person to the client's redirect URI with params,
// state and iss (RFC 9207).
func (e *Endpoint) redirectBack(w http.ResponseWriter, r *http.Request, a authzRequest, params url.Values) {
	u, _ := url.Parse(a.RedirectURI) // checked when registered
	q := u.Query()
	for k, v := range params {
		q[k] = v
	}
	if a.State != "" {
		q.Set("state", a.State)
	}
	q.Set("iss", e.issuer)
	u.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, u.String(), http.StatusFound)
}

// authzFail answers a refusal: back to the client (with error,
// error_description, state and iss) when a's redirect URI is known good,
// else directly as JSON.
func (e *Endpoint) authzFail(w http.ResponseWriter, r *http.Request, a *authzRequest, ae *authzError) {
	level := slog.LevelWarn
	if ae.Status >= 500 {
		level = slog.LevelError
	}
	attrs := []slog.Attr{slog.String("request_id", requestid.From(r.Context())), slog.String("path", broker.Bound(r.URL.Path, broker.MaxLoggedPath)),
		slog.String("error", ae.Code), slog.String("error_description", broker.Bound(ae.Description, broker.MaxAuditString))}
	if ae.Err != nil {
		attrs = append(attrs, slog.String("cause", broker.Bound(ae.Err.Error(), broker.MaxAuditString)))
	}
	e.log.LogAttrs(r.Context(), level, "authorization refused", attrs...)
	if ae.redirect && a != nil {
		e.redirectBack(w, r, *a, url.Values{"error": {ae.Code}, "error_description": {broker.Bound(ae.Description, broker.MaxAuditString)}})
		return
	}
	status := ae.Status
	if status == 0 {
		status = http.StatusBadRequest
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, errorBody{Error: ae.Code, Description: broker.Bound(ae.Description, broker.MaxAuditString), RequestID: requestid.From(r.Context())})
}

// clientError maps a client resolution failure to its answer.
func clientError(err error) *Error {
	var ce errCIMD
	switch {
	case errors.Is(err, errUnknownClient):
		return &Error{Code: ErrInvalidClient, Description: "client_id is not a registered client nor a client metadata document URL", Status: http.StatusBadRequest}
	case errors.As(err, &ce):
		return &Error{Code: ErrInvalidClient, Description: ce.msg, Status: http.StatusBadRequest, Err: err}
	}
	return &Error{Code: ErrInvalidClient, Description: "the client metadata document could not be fetched", Status: http.StatusBadRequest, Err: err}
}

func unavailable(err error) *Error {
	return &Error{Code: ErrTemporarilyUnavailable, Description: "a dependency is unavailable; nothing was issued", Status: http.StatusServiceUnavailable, Err: err}
}

// bound reports whether r carries the browser cookie a was started with.
func (in *interactive) bound(r *http.Request, a authzRequest) bool {
	c, err := r.Cookie(bindingCookie)
	return err == nil && subtle.ConstantTimeCompare([]byte(hashHex(c.Value)), []byte(a.Binding)) == 1
}

func (in *interactive) put(ctx context.Context, key string, v any, until time.Time) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	lctx, cancel := broker.LedgerCtx(ctx)
	defer cancel()
	ok, err := in.store.Put(lctx, key, body, until)
	if err == nil && !ok {
		err = errors.New("oauth store: a fresh random key was taken")
	}
	return err
}

// take reads and deletes a one-time record into v: invalid_grant when it
// is gone (used, expired or never issued), 503 when the store is down.
func (in *interactive) take(ctx context.Context, key string, v any) *Error {
	lctx, cancel := broker.LedgerCtx(ctx)
	defer cancel()
	body, err := in.store.Take(lctx, key)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return refuse(ErrInvalidGrant, "unknown, expired or already used")
	case err != nil:
		return unavailable(err)
	case json.Unmarshal(body, v) != nil:
		return &Error{Code: ErrServerError, Description: "internal error", Status: http.StatusInternalServerError}
	}
	return nil
}

// randomToken is 256 random bits, base64url.
func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashHex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// validChallenge: a base64url SHA-256 is 43 characters.
func validChallenge(c string) bool {
	b, err := base64.RawURLEncoding.DecodeString(c)
	return err == nil && len(c) == 43 && len(b) == sha256.Size
}

// pkceMatches checks a code_verifier (RFC 7636 section 4.1: 43 to 128
// unreserved characters) against the S256 challenge.
func pkceMatches(verifier, challenge string) bool {
	if len(verifier) < 43 || len(verifier) > 128 || strings.ContainsFunc(verifier, func(r rune) bool {
		return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' || r == '~')
	}) {
		return false
	}
	sum := sha256.Sum256([]byte(verifier))
	return subtle.ConstantTimeCompare([]byte(base64.RawURLEncoding.EncodeToString(sum[:])), []byte(challenge)) == 1
}
