package devidp

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The authorization code flow of the development issuer (OpenID Connect
// Core §3.1 with PKCE, RFC 7636, S256 only): GET /authorize shows a sign-in
// form in which a person types any name (it is a development issuer: there
// is no password), POST /authorize issues a one-time code to the client's
// redirect_uri, and POST /token with grant_type=authorization_code trades
// the code and its PKCE verifier for an ID token whose aud is the client_id.
//
// Two development-only shortcuts make scripted sign-ins possible without a
// browser: login_hint=NAME on GET /authorize signs NAME in at once, and
// dev_groups=a,b chooses the groups claim (default AdminGroup).

const (
	codeTTL       = time.Minute
	idTokenTTL    = 10 * time.Minute
	maxCodes      = 10000
	maxParamBytes = 2048
)

// Groups a person can pick on the development sign-in form; `valet dev`
// maps them to the admin, responder and viewer roles.
const (
	ResponderGroup = "valet-responders"
	ViewerGroup    = "valet-viewers"
)

var (
	groupName     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	pkceChallenge = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	pkceVerifier  = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)
)

// authRequest is a validated authorization request.
type authRequest struct {
	ClientID, RedirectURI, State, Nonce, Challenge string
}

// codeGrant is what one issued code stands for.
type codeGrant struct {
	req     authRequest
	subject string
	groups  []string
	expires time.Time
}

// codes holds the outstanding authorization codes, each usable once.
type codes struct {
	mu sync.Mutex
	m  map[string]codeGrant
}

func (c *codes) put(now time.Time, g codeGrant) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]codeGrant)
	}
	for k, v := range c.m {
		if now.After(v.expires) {
			delete(c.m, k)
		}
	}
	if len(c.m) >= maxCodes {
		return "", errors.New("too many outstanding authorization codes; try again in a minute")
	}
	code := randomToken()
	c.m[code] = g
	return code, nil
}

// take removes and returns the grant of code, so a code works once.
func (c *codes) take(code string) (codeGrant, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	g, ok := c.m[code]
	delete(c.m, code)
	return g, ok
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// parseAuthRequest checks the parameters of an authorization request.
// Errors that make the redirect_uri untrustworthy are shown to the person,
// never sent to the redirect_uri (RFC 6749 §4.1.2.1).
func (d *IdP) parseAuthRequest(q url.Values) (authRequest, error) {
	for k, v := range q {
		if len(v) > 1 {
			return authRequest{}, fmt.Errorf("parameter %s is repeated", k)
		}
		if len(v[0]) > maxParamBytes {
			return authRequest{}, fmt.Errorf("parameter %s is longer than %d bytes", k, maxParamBytes)
		}
	}
	r := authRequest{
		ClientID: q.Get("client_id"), RedirectURI: q.Get("redirect_uri"),
		State: q.Get("state"), Nonce: q.Get("nonce"), Challenge: q.Get("code_challenge"),
	}
	switch {
	case r.ClientID == "":
		return r, errors.New("client_id is missing")
	case r.RedirectURI == "":
		return r, errors.New("redirect_uri is missing")
	}
	if err := d.checkRedirect(r.RedirectURI); err != nil {
		return r, err
	}
	switch {
	case q.Get("response_type") != "code":
		return r, errors.New("response_type must be code")
	case q.Get("code_challenge_method") != "S256":
		return r, errors.New("code_challenge_method must be S256 (PKCE; plain is not accepted)")
	case !pkceChallenge.MatchString(r.Challenge):
		return r, errors.New("code_challenge must be the 43-character base64url S256 challenge")
	case r.State == "":
		return r, errors.New("state is missing")
	}
	return r, nil
}

// checkRedirect accepts a redirect_uri on a loopback host or on the
// issuer's own host: the development issuer serves no other client.
func (d *IdP) checkRedirect(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Fragment != "" || u.User != nil {
		return errors.New("redirect_uri must be an absolute http(s) URL without a fragment or user info")
	}
	host := u.Hostname()
	if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
		return nil
	}
	if iu, err := url.Parse(d.issuer); err == nil && strings.EqualFold(iu.Hostname(), host) {
		return nil
	}
	return fmt.Errorf("redirect_uri host %q is neither loopback nor the issuer's host", host)
}

var signInPage = template.Must(template.New("signin").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Valet development sign-in</title></head>
<body>
<h1>Development sign-in</h1>
<p>This is Valet's development issuer: any name signs in, with no password. Never trust it in production.</p>
<p>Signing in to <b>{{.ClientID}}</b>.</p>
<form method="post" action="authorize">
<label>Name <input name="name" id="name" required pattern="[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}" value="alice"></label>
<fieldset><legend>Groups</legend>
<label><input type="radio" name="group" value="{{.Admin}}" checked> {{.Admin}}</label>
<label><input type="radio" name="group" value="{{.Responder}}"> {{.Responder}}</label>
<label><input type="radio" name="group" value="{{.Viewer}}"> {{.Viewer}}</label>
</fieldset>
{{range $k, $v := .Hidden}}<input type="hidden" name="{{$k}}" value="{{$v}}">
{{end}}<button type="submit" id="signin">Sign in</button>
</form>
</body></html>
`))

// handleAuthorize serves GET and POST /authorize.
func (d *IdP) handleAuthorize(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	params := r.URL.Query()
	if r.Method == http.MethodPost {
		params = r.PostForm
	}
	req, err := d.parseAuthRequest(withoutSignIn(params))
	if err != nil {
		http.Error(w, "invalid authorization request: "+err.Error(), http.StatusBadRequest)
		return
	}
	name, groups := params.Get("login_hint"), params.Get("dev_groups")
	if r.Method == http.MethodPost {
		name, groups = params.Get("name"), params.Get("group")
	}
	if name == "" {
		hidden := map[string]string{}
		for k := range params {
			hidden[k] = params.Get(k)
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; form-action 'self'")
		w.Header().Set("X-Frame-Options", "DENY")
		_ = signInPage.Execute(w, map[string]any{
			"ClientID": req.ClientID, "Hidden": hidden,
			"Admin": AdminGroup, "Responder": ResponderGroup, "Viewer": ViewerGroup,
		})
		return
	}
	if !agentName.MatchString(name) {
		http.Error(w, "name must be 1-128 characters of letters, digits and ._@:- starting with a letter or digit", http.StatusBadRequest)
		return
	}
	gs, err := parseGroups(groups)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	code, err := d.codes.put(d.now(), codeGrant{req: req, subject: name, groups: gs, expires: d.now().Add(codeTTL)})
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	to, _ := url.Parse(req.RedirectURI)
	q := to.Query()
	q.Set("code", code)
	q.Set("state", req.State)
	q.Set("iss", d.issuer) // RFC 9207
	to.RawQuery = q.Encode()
	http.Redirect(w, r, to.String(), http.StatusFound)
}

// withoutSignIn drops the sign-in fields, which are not part of the
// authorization request.
func withoutSignIn(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		switch k {
		case "name", "group", "login_hint", "dev_groups", "scope", "prompt", "resource":
		default:
			out[k] = vs
		}
	}
	return out
}

func parseGroups(s string) ([]string, error) {
	if s == "" {
		return []string{AdminGroup}, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > 8 {
		return nil, errors.New("at most 8 groups")
	}
	for _, g := range parts {
		if !groupName.MatchString(g) {
			return nil, fmt.Errorf("group %q must be 1-64 letters, digits and ._- starting with a letter or digit", g)
		}
	}
	return parts, nil
}

// exchangeCode answers POST /token with grant_type=authorization_code
// (RFC 6749 §4.1.3, RFC 7636 §4.6).
func (d *IdP) exchangeCode(w http.ResponseWriter, form url.Values) {
	w.Header().Set("Cache-Control", "no-store")
	fail := func(status int, code, desc string) {
		writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
	}
	verifier := form.Get("code_verifier")
	if !pkceVerifier.MatchString(verifier) {
		fail(http.StatusBadRequest, "invalid_request", "code_verifier must be 43-128 characters of the PKCE alphabet")
		return
	}
	g, ok := d.codes.take(form.Get("code"))
	if !ok || d.now().After(g.expires) {
		fail(http.StatusBadRequest, "invalid_grant", "the code is unknown, used or expired")
		return
	}
	sum := sha256.Sum256([]byte(verifier))
	want := base64.RawURLEncoding.EncodeToString(sum[:])
	switch {
	case subtle.ConstantTimeCompare([]byte(want), []byte(g.req.Challenge)) != 1:
		fail(http.StatusBadRequest, "invalid_grant", "code_verifier does not match the code_challenge")
		return
	case form.Get("client_id") != g.req.ClientID:
		fail(http.StatusBadRequest, "invalid_grant", "the code was issued to another client")
		return
	case form.Get("redirect_uri") != g.req.RedirectURI:
		fail(http.StatusBadRequest, "invalid_grant", "redirect_uri differs from the authorization request's")
		return
	}
	now := d.now()
	claims := jwt.MapClaims{
		"iss": d.issuer, "sub": g.subject, "aud": g.req.ClientID, "azp": g.req.ClientID,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(idTokenTTL).Unix(),
		"groups": g.groups, "name": g.subject,
	}
	if g.req.Nonce != "" {
		claims["nonce"] = g.req.Nonce
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	t.Header["kid"] = d.kid
	idToken, err := t.SignedString(d.key)
	if err != nil {
		fail(http.StatusInternalServerError, "server_error", "signing the ID token failed")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		// The development issuer has no userinfo endpoint; the access
		// token exists because OAuth clients require one.
		"access_token": randomToken(), "token_type": "Bearer",
		"expires_in": int(idTokenTTL.Seconds()), "id_token": idToken, "scope": "openid",
	})
}
