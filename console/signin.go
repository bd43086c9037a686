package console

import (
	"crypto/subtle"
	"net/http"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
)

// signin starts authorization code + PKCE at the admin issuer: state,
// nonce and verifier stay on the server, bound to a short-lived cookie of
// this browser.
func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	st, to := c.cfg.SignIn.Start()
	id := c.sessions.start(pending{Login: st})
	http.SetCookie(w, &http.Cookie{Name: signinCookie, Value: id, Path: "/console/", MaxAge: int(pendingTTL / time.Second),
		HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteLaxMode})
	http.Redirect(w, r, to, http.StatusSeeOther)
}

// callback finishes the sign-in: the sign-in must be this browser's, the
// state must match, the code is redeemed with the verifier and the ID
// token verified (nonce included), and the admin role rules must give the
// admin a role.
func (c *Console) callback(w http.ResponseWriter, r *http.Request) {
	ck, err := r.Cookie(signinCookie)
	http.SetCookie(w, &http.Cookie{Name: signinCookie, Value: "", Path: "/console/", MaxAge: -1, HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteLaxMode})
	if err != nil {
		c.fail(w, r, nil, &broker.Error{Code: broker.CodeUnauthenticated, Message: "this sign-in was not started in this browser, or took longer than 10 minutes; sign in again"})
		return
	}
	p, ok := c.sessions.finish(ck.Value)
	if !ok {
		c.fail(w, r, nil, &broker.Error{Code: broker.CodeUnauthenticated, Message: "this sign-in has expired or was used already; sign in again"})
		return
	}
	pr, err := c.cfg.SignIn.Finish(r.Context(), p.Login, r.URL.Query())
	if err != nil {
		if broker.ErrorCode(err) == broker.CodeUnavailable {
			c.fail(w, r, nil, broker.Unavailable("the admin identity provider", err))
			return
		}
		// Login's errors never quote a code or a token, and bound what
		// they quote of the provider's answer.
		c.log.WarnContext(r.Context(), "console sign-in failed", "err", err)
		c.fail(w, r, nil, &broker.Error{Code: broker.CodeUnauthenticated, Message: "sign-in failed: " + bounded(err.Error(), 300)})
		return
	}
	// The role rules decide now, as on every later page: an admin with no
	// role gets no session.
	if _, err := c.cfg.Admin.AuthorizeSignedIn(r.Context(), pr, incident.RoleViewer, "console.signin"); err != nil {
		c.fail(w, r, nil, err)
		return
	}
	expires := c.now().Add(c.cfg.SessionTTL)
	if !pr.TokenExpiry.IsZero() && pr.TokenExpiry.Before(expires) {
		expires = pr.TokenExpiry
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
		if ok && r.ParseForm() == nil && subtle.ConstantTimeCompare([]byte(r.PostForm.Get("csrf")), []byte(s.csrf)) == 1 {
			c.sessions.end(ck.Value)
		} else if ok {
			c.fail(w, r, nil, &broker.Error{Code: broker.CodeForbidden, Message: "CSRF check failed", Field: "csrf"})
			return
		}
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/console/", MaxAge: -1, HttpOnly: true, Secure: c.secure, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/console/", http.StatusSeeOther)
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
