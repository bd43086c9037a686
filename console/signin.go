package console

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
)

// signin starts authorization code + PKCE at the admin issuer: state,
// nonce and verifier stay on the server, bound to a short-lived cookie of
// this browser.
func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	p := pending{state: randomToken(), nonce: randomToken(), verifier: randomToken() + randomToken()[:11]}
	id := c.sessions.start(p)
	http.SetCookie(w, &http.Cookie{Name: signinCookie, Value: id, Path: "/console/", MaxAge: int(pendingTTL / time.Second),
		HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, c.cfg.SignIn.AuthCodeURL(p.state, p.nonce, p.verifier), http.StatusSeeOther)
}

// callback finishes the sign-in: the state must be this browser's, the
// code is redeemed with the verifier, the ID token verified (nonce
// included), and the admin role rules must give the admin a role.
func (c *Console) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ck, err := r.Cookie(signinCookie)
	http.SetCookie(w, &http.Cookie{Name: signinCookie, Value: "", Path: "/console/", MaxAge: -1, HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteLaxMode})
	if e := q.Get("error"); e != "" {
		c.fail(w, r, nil, &broker.Error{Code: broker.CodeUnauthenticated, Message: "the identity provider refused the sign-in (" + bounded(e, 64) + ")"})
		return
	}
	if err != nil {
		c.fail(w, r, nil, &broker.Error{Code: broker.CodeUnauthenticated, Message: "this sign-in was not started in this browser, or took longer than 10 minutes; sign in again"})
		return
	}
	p, ok := c.sessions.finish(ck.Value, q.Get("state"))
	if !ok || q.Get("code") == "" {
		c.fail(w, r, nil, &broker.Error{Code: broker.CodeUnauthenticated, Message: "the sign-in's state does not match or has expired; sign in again", Field: "state"})
		return
	}
	claims, err := c.cfg.SignIn.Exchange(r.Context(), q.Get("code"), p.verifier, p.nonce)
	if err != nil {
		if broker.ErrorCode(err) == broker.CodeUnavailable {
			c.fail(w, r, nil, broker.Unavailable("the admin identity provider", err))
			return
		}
		c.log.WarnContext(r.Context(), "console sign-in failed", "err", err)
		c.fail(w, r, nil, broker.Unauthenticated(errors.New("console sign-in failed")))
		return
	}
	sub, _ := claims["sub"].(string)
	iss, _ := claims["iss"].(string)
	pr := broker.Principal{Issuer: c.cfg.Issuer, IssuerURL: iss, Subject: sub, Claims: claims}
	// The role rules decide now, as on every later page: an admin with no
	// role gets no session.
	if _, err := c.cfg.Admin.AuthorizeSignedIn(r.Context(), pr, incident.RoleViewer, "console.signin"); err != nil {
		c.fail(w, r, nil, err)
		return
	}
	expires := c.now().Add(c.cfg.SessionTTL)
	if exp := numClaim(claims["exp"]); exp > 0 && time.Unix(exp, 0).Before(expires) {
		expires = time.Unix(exp, 0)
	}
	id := c.sessions.create(pr, expires)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/console/", Expires: expires,
		HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteStrictMode})
	// A page, not a redirect: the browser sends a SameSite=Strict cookie
	// on a navigation this same-site page starts, not on the tail of the
	// issuer's cross-site redirect.
	c.render(w, r, http.StatusOK, "signedin", &view{Title: "Signed in"})
}

func (c *Console) signout(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if ck, err := r.Cookie(sessionCookie); err == nil {
		s, ok := c.sessions.get(ck.Value)
		if ok && r.ParseForm() == nil && r.PostForm.Get("csrf") == s.csrf {
			c.sessions.end(ck.Value)
		} else if ok {
			c.fail(w, r, nil, &broker.Error{Code: broker.CodeForbidden, Message: "CSRF check failed", Field: "csrf"})
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/console/", MaxAge: -1, HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/console/", http.StatusSeeOther)
}

func numClaim(v any) int64 {
	switch n := v.(type) {
	case float64:
		if n > 0 && n < math.MaxInt32*4 {
			return int64(n)
		}
	case int64:
		return n
	case json.Number:
		i, _ := n.Int64()
		return i
	}
	return 0
}

// bounded cuts s to n bytes of printable ASCII for a message.
func bounded(s string, n int) string {
	out := make([]byte, 0, min(len(s), n))
	for i := 0; i < len(s) && len(out) < n; i++ {
		if s[i] >= 0x20 && s[i] < 0x7f {
			out = append(out, s[i])
		}
	}
	return string(out)
}
