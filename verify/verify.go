// Package verify is what a tool server or MCP server wraps around its
// handlers to accept Valet task tokens: it checks the token against Valet's
// published keys (fetched once and cached), its audience and expiry, that
// the tool being called is granted, the DPoP proof when the token is bound
// to a key, and revocation, through a local deny set fed by Valet's
// revocation feed (no call to Valet per request) or, until the feed is
// live, through introspection.
package verify

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/dpop"
)

// Config configures a Verifier.
type Config struct {
	// Issuer is Valet's public URL, the iss of its tokens.
	Issuer string
	// Audience is this tool server's audience; a token must name it.
	Audience string
	// ClientID and ClientSecret authenticate to introspection and the
	// revocation feed (a Valet introspection client).
	ClientID, ClientSecret string
	// HTTPClient talks to Valet; default has a 5 s timeout.
	HTTPClient *http.Client
	// Now is the clock; default time.Now.
	Now func() time.Time
	// PublicURL is this server's own base URL as its clients call it, for
	// the htu of DPoP proofs. Without it, DPoP-bound task tokens are
	// refused: the request's Host header is the client's to choose, so a
	// proof could never be tied to this server by it.
	PublicURL string
	Logger    *slog.Logger
	// Scopes, when set, are published as scopes_supported in the RFC 9728
	// metadata (resource.go): the scope values clients may ask Valet for,
	// such as template:<name> and the tools.
	Scopes []string
}

// Claims are a checked task token's claims.
type Claims struct {
	ID, TaskID, Subject, Template, AgentIssuer, Scope, JKT string
	Tools, Audience, Act                                   []string
	IssuedAt, ExpiresAt                                    time.Time

	// ActionTools are the sensitive tools the task may use with an action
	// token (claim action_tools); never accepted by Check.
	ActionTools []string
}

// Actor is the agent holding the token.
func (c Claims) Actor() string {
	if len(c.Act) > 0 {
		return c.Act[0]
	}
	return c.Subject
}

// Error is a refusal: Status is 401 (token), 403 (tool not granted) or 503
// (Valet could not be asked and nothing is known). Message is safe to send.
// Scope, on a 403, is the scope that was needed (template:<name> and the
// tool), for the insufficient_scope challenge.
type Error struct {
	Status  int
	Message string
	Err     error
	Scope   string

	// noChallenge: answer without a WWW-Authenticate challenge (a
	// sensitive tool's action token was missing or refused).
	noChallenge bool
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %v", e.Status, e.Message, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

func refuse(status int, msg string, err error) *Error {
	return &Error{Status: status, Message: msg, Err: err}
}

const (
	// jwksMinRefresh is the least time between two JWKS fetches on unknown kids.
	jwksMinRefresh = 30 * time.Second
	// jwksFetchTimeout bounds one shared JWKS fetch, whatever HTTPClient does.
	jwksFetchTimeout = 10 * time.Second
)

// Verifier checks task tokens. It is safe for concurrent use.
type Verifier struct {
	cfg          Config
	parser       *jwt.Parser
	actionParser *jwt.Parser

	keysMu    sync.RWMutex
	keys      map[string]crypto.PublicKey // replaced on refresh, never mutated
	lastFetch time.Time
	inflight  *jwksFetch

	deny    *denySet
	proof   *replay
	reports *reports
}

// New checks cfg and builds a Verifier. Call Run to follow the revocation
// feed; until it is live, every Check asks Valet's introspection.
func New(cfg Config) (*Verifier, error) {
	var errs []error
	if u, err := url.Parse(cfg.Issuer); err != nil || u.Scheme == "" || u.Host == "" {
		errs = append(errs, fmt.Errorf("issuer %q must be an absolute URL", cfg.Issuer))
	}
	if cfg.Audience == "" {
		errs = append(errs, errors.New("audience is required"))
	}
	if cfg.ClientID == "" || cfg.ClientSecret == "" {
		errs = append(errs, errors.New("client id and secret are required (introspection and the revocation feed)"))
	}
	if cfg.PublicURL != "" {
		if u, err := url.Parse(cfg.PublicURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
			u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, fmt.Errorf("public URL %q must be an absolute http(s) URL without user, query or fragment", cfg.PublicURL))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 5 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Issuer = strings.TrimSuffix(cfg.Issuer, "/")
	if cfg.PublicURL == "" {
		cfg.Logger.Warn("verify: no PublicURL configured; DPoP-bound task tokens will be refused")
	}
	return &Verifier{
		cfg: cfg,
		parser: jwt.NewParser(jwt.WithValidMethods([]string{"EdDSA", "ES256"}), jwt.WithIssuer(cfg.Issuer),
			jwt.WithAudience(cfg.Audience), jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithTimeFunc(cfg.Now),
			jwt.WithLeeway(ClockSkew), jwt.WithStrictDecoding()),
		actionParser: jwt.NewParser(jwt.WithValidMethods([]string{"EdDSA", "ES256"}), jwt.WithIssuer(cfg.Issuer),
			jwt.WithAudience(cfg.Audience), jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithTimeFunc(cfg.Now),
			jwt.WithLeeway(ClockSkew), jwt.WithStrictDecoding()),
		keys:    map[string]crypto.PublicKey{},
		deny:    newDenySet(),
		proof:   newReplay(),
		reports: newReports(),
	}, nil
}

// Middleware checks every request with Check, tool(r) naming the tool it
// calls, and puts the claims in the request's context (see FromContext).
// After the handler has run it queues a report of the call (see Report
// and Describe).
// Refusals are answered as JSON {"error", "message"} with their status.
func (v *Verifier) Middleware(tool func(*http.Request) string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := v.Check(r.Context(), r, tool(r))
			if err != nil {
				v.writeRefusal(w, r, err)
				return
			}
			h := &effectHolder{}
			ctx := context.WithValue(context.WithValue(r.Context(), claimsKey{}, c), effectKey{}, h)
			sw := &statusWriter{ResponseWriter: w}
			next.ServeHTTP(sw, r.WithContext(ctx))
			if sw.status == 0 {
				sw.status = http.StatusOK
			}
			h.mu.Lock()
			e := h.e
			h.mu.Unlock()
			v.Report(r, c, tool(r), sw.status, e)
		})
	}
}

// writeRefusal answers a refused request: its status, the challenge, and
// JSON {"error", "message"}.
func (v *Verifier) writeRefusal(w http.ResponseWriter, r *http.Request, err error) {
	var e *Error
	if !errors.As(err, &e) {
		e = refuse(http.StatusInternalServerError, "internal error", err)
	}
	v.cfg.Logger.WarnContext(r.Context(), "tool call refused", "status", e.Status, "reason", e.Error())
	if ch := v.challenge(r, e); ch != "" {
		w.Header().Set("WWW-Authenticate", ch)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": http.StatusText(e.Status), "message": e.Message})
}

type claimsKey struct{}

// FromContext returns the claims Middleware put in ctx.
func FromContext(ctx context.Context) (Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(Claims)
	return c, ok
}

// wireClaims is a task token's payload.
type wireClaims struct {
	jwt.RegisteredClaims
	TaskID      string    `json:"task_id"`
	Template    string    `json:"template"`
	Tools       []string  `json:"tools"`
	ActionTools []string  `json:"action_tools"`
	Scope       string    `json:"scope"`
	AgentIssuer string    `json:"agent_issuer"`
	Act         *actClaim `json:"act"`
	Cnf         *struct {
		JKT string `json:"jkt"`
	} `json:"cnf"`
}

type actClaim struct {
	Sub string    `json:"sub"`
	Act *actClaim `json:"act"`
}

// Check checks the request's task token for a call of tool. Any error
// means refuse; it is an *Error with the status to answer.
func (v *Verifier) Check(ctx context.Context, r *http.Request, tool string) (Claims, error) {
	c, err := v.checkToken(ctx, r)
	if err != nil {
		return Claims{}, err
	}
	if err := checkTool(c, tool); err != nil {
		return Claims{}, err
	}
	if err := v.checkRevoked(ctx, bearerOf(r), c); err != nil {
		return Claims{}, err
	}
	return c, nil
}

// checkTool refuses a tool the task token does not grant, with the scope
// that would grant it.
func checkTool(c Claims, tool string) error {
	if tool != "" && slices.Contains(c.Tools, tool) {
		return nil
	}
	e := refuse(403, fmt.Sprintf("tool %q is not granted to this task", tool), nil)
	if validScopeToken(tool) {
		e.Scope = tool
		if validScopeToken(c.Template) {
			e.Scope = "template:" + c.Template + " " + tool
		}
	}
	return e
}

// ClockSkew is how far a tool server's clock may lag Valet's: a token's
// iat and nbf may be that far in the future (Valet stamps them in whole
// seconds, so a verifier a few milliseconds behind would otherwise refuse
// fresh tokens). Its exp gets no leeway (expired): a task token never
// outlives its task's deadline.
const ClockSkew = 5 * time.Second

// expired refuses a token at or past its exp, with no leeway.
func expired(exp *jwt.NumericDate, now time.Time) error {
	if exp == nil || !now.Before(exp.Time) {
		return jwt.ErrTokenExpired
	}
	return nil
}

// checkToken checks the request's task token and, for a bound token, its
// DPoP proof; not the tool, not revocation.
func (v *Verifier) checkToken(ctx context.Context, r *http.Request) (Claims, error) {
	raw, scheme := tokenOf(r)
	if raw == "" {
		return Claims{}, refuse(401, "a task token is required", errors.New("no Authorization header"))
	}
	if len(raw) > 8192 {
		return Claims{}, refuse(401, "invalid task token", errors.New("token too long"))
	}
	var wc wireClaims
	tok, err := v.parser.ParseWithClaims(raw, &wc, func(t *jwt.Token) (any, error) { return v.key(ctx, t, "at+jwt") })
	if err != nil || !tok.Valid {
		return Claims{}, refuse(401, "invalid task token", err)
	}
	if err := expired(wc.ExpiresAt, v.cfg.Now()); err != nil {
		return Claims{}, refuse(401, "invalid task token", err)
	}
	if wc.ID == "" || wc.TaskID == "" || wc.Subject == "" {
		return Claims{}, refuse(401, "invalid task token", errors.New("missing jti, task_id or sub"))
	}
	c := Claims{ID: wc.ID, TaskID: wc.TaskID, Subject: wc.Subject, Template: wc.Template, AgentIssuer: wc.AgentIssuer,
		Scope: wc.Scope, Tools: wc.Tools, ActionTools: wc.ActionTools, Audience: wc.Audience, IssuedAt: wc.IssuedAt.Time, ExpiresAt: wc.ExpiresAt.Time}
	for a, n := wc.Act, 0; a != nil; a, n = a.Act, n+1 {
		if a.Sub == "" || n >= 32 {
			return Claims{}, refuse(401, "invalid task token", errors.New("bad act claim"))
		}
		c.Act = append(c.Act, a.Sub)
	}
	if wc.Cnf != nil {
		c.JKT = wc.Cnf.JKT
		if c.JKT == "" {
			return Claims{}, refuse(401, "invalid task token", errors.New("cnf without jkt"))
		}
		if v.cfg.PublicURL == "" {
			return Claims{}, refuse(401, "this tool server does not accept key-bound (DPoP) tokens", errors.New("bound token, but no PublicURL is configured to check its proof's htu against"))
		}
		if !strings.EqualFold(scheme, "DPoP") {
			return Claims{}, refuse(401, "this token is bound to a key: send it with the DPoP scheme and a proof", errors.New("bound token sent as Bearer"))
		}
		if err := v.checkProof(r, raw, c.JKT); err != nil {
			return Claims{}, err
		}
	}
	return c, nil
}

// tokenOf reads the task token of "Authorization: Bearer|DPoP <token>".
func tokenOf(r *http.Request) (token, scheme string) {
	return dpop.AccessToken(r, dpop.Bearer, dpop.DPoP)
}

func bearerOf(r *http.Request) string { raw, _ := tokenOf(r); return raw }

func (v *Verifier) checkProof(r *http.Request, raw, jkt string) error {
	now := v.cfg.Now()
	p, err := dpop.Check(r.Header.Get("DPoP"), r.Method, v.requestURL(r), now, raw)
	if err != nil {
		return refuse(401, "invalid DPoP proof", err)
	}
	if p.JKT != jkt {
		return refuse(401, "invalid DPoP proof", errors.New("proof key does not match cnf.jkt"))
	}
	if !v.proof.once(p.JKT+":"+p.JTI, p.IssuedAt.Add(2*dpop.Window), now) {
		return refuse(401, "invalid DPoP proof", errors.New("proof jti replayed"))
	}
	return nil
}

// requestURL is the URL a proof's htu must name: PublicURL and the
// request's path, never the client-chosen Host header.
func (v *Verifier) requestURL(r *http.Request) string {
	return strings.TrimSuffix(v.cfg.PublicURL, "/") + r.URL.EscapedPath()
}

// key finds the verification key named by the token's kid, fetching the
// JWKS when the kid is unknown, at most once per jwksMinRefresh. The fetch
// runs outside the key lock: a check whose kid is known never waits for
// it, and concurrent checks with unknown kids share the one fetch.
func (v *Verifier) key(ctx context.Context, t *jwt.Token, wantTyp string) (any, error) {
	if typ, _ := t.Header["typ"].(string); typ != wantTyp {
		return nil, fmt.Errorf("typ must be %s", wantTyp)
	}
	if _, ok := t.Header["crit"]; ok {
		return nil, errors.New("crit header is not supported")
	}
	kid, _ := t.Header["kid"].(string)
	if kid == "" {
		return nil, errors.New("no kid")
	}
	v.keysMu.RLock()
	k, ok := v.keys[kid]
	v.keysMu.RUnlock()
	if ok {
		return k, nil
	}
	if err := v.refreshKeys(ctx); err != nil {
		return nil, err
	}
	v.keysMu.RLock()
	k, ok = v.keys[kid]
	v.keysMu.RUnlock()
	if ok {
		return k, nil
	}
	return nil, fmt.Errorf("kid %.64q unknown", kid)
}

// jwksFetch is one JWKS fetch that concurrent callers wait on.
type jwksFetch struct {
	done chan struct{}
	err  error
}

// refreshKeys fetches the JWKS unless one is in flight (then it waits for
// that one) or the last began less than jwksMinRefresh ago.
func (v *Verifier) refreshKeys(ctx context.Context) error {
	v.keysMu.Lock()
	if call := v.inflight; call != nil {
		v.keysMu.Unlock()
		select {
		case <-call.done:
			return call.err
		case <-ctx.Done():
			return fmt.Errorf("waiting for the JWKS: %w", ctx.Err())
		}
	}
	now := v.cfg.Now()
	if !v.lastFetch.IsZero() && now.Sub(v.lastFetch) < jwksMinRefresh {
		v.keysMu.Unlock()
		return fmt.Errorf("unknown kid (JWKS fetched %s ago)", now.Sub(v.lastFetch))
	}
	v.lastFetch = now
	call := &jwksFetch{done: make(chan struct{})}
	v.inflight = call
	v.keysMu.Unlock()

	// The fetch is shared: one caller giving up must not fail the others.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), jwksFetchTimeout)
	keys, err := v.fetchJWKS(fctx)
	cancel()
	v.keysMu.Lock()
	if err == nil {
		v.keys = keys
	}
	v.inflight = nil
	v.keysMu.Unlock()
	call.err = err
	close(call.done)
	return err
}

func (v *Verifier) fetchJWKS(ctx context.Context) (map[string]crypto.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.cfg.Issuer+"/.well-known/jwks.json", nil)
	if err != nil {
		return nil, err
	}
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching JWKS: status %d", resp.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("decoding JWKS: %w", err)
	}
	keys := map[string]crypto.PublicKey{}
	for _, k := range set.Keys {
		if k.KeyID != "" && k.IsPublic() && k.Valid() {
			keys[k.KeyID] = k.Key
		}
	}
	return keys, nil
}

// checkRevoked consults the deny set when the feed is live, else Valet's
// introspection.
func (v *Verifier) checkRevoked(ctx context.Context, raw string, c Claims) error {
	if v.deny.live() {
		if v.deny.denied(c, v.cfg.Now()) {
			return refuse(401, "invalid task token", errors.New("revoked (feed)"))
		}
		deny, unsure := v.deny.controlled(c)
		if deny {
			return refuse(401, "invalid task token", errors.New("under an incident control (feed)"))
		}
		if !unsure {
			return nil
		}
		// A control may cover a link whose issuer the token does not
		// name: Valet knows.
	}
	active, err := v.introspect(ctx, raw)
	if err != nil {
		return refuse(503, "Valet cannot be reached to check revocation", err)
	}
	if !active {
		return refuse(401, "invalid task token", errors.New("revoked (introspection)"))
	}
	return nil
}

// introspect asks Valet (RFC 7662) whether raw is active.
func (v *Verifier) introspect(ctx context.Context, raw string) (bool, error) {
	var body struct {
		Active bool `json:"active"`
	}
	if err := v.postToken(ctx, "/v1/introspect", raw, &body); err != nil {
		return false, fmt.Errorf("introspecting: %w", err)
	}
	return body.Active, nil
}

// postToken posts token=raw to one of Valet's form endpoints with the tool
// server's client credentials and decodes the JSON answer into out.
func (v *Verifier) postToken(ctx context.Context, path, raw string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, v.cfg.Issuer+path,
		strings.NewReader(url.Values{"token": {raw}}.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(v.cfg.ClientID, v.cfg.ClientSecret)
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return fmt.Errorf("decoding the answer: %w", err)
	}
	return nil
}

// replay remembers DPoP proof jtis this process has accepted.
type replay struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

func newReplay() *replay { return &replay{seen: map[string]time.Time{}} }

func (p *replay) once(key string, until, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.seen) > 10_000 {
		for k, u := range p.seen {
			if now.After(u) {
				delete(p.seen, k)
			}
		}
	}
	if u, ok := p.seen[key]; ok && !now.After(u) {
		return false
	}
	p.seen[key] = until
	return true
}
