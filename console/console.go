package console

import (
	"context"
	"crypto/subtle"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"golang.org/x/oauth2"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/stepup"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// SignIn is the relying party of the admin OIDC issuer: authorization code
// with PKCE (S256), state, nonce and the ID token's verification
// (*identity.Login).
type SignIn interface {
	// Start returns what to keep for one sign-in and the URL to send the
	// person to.
	Start(extra ...oauth2.AuthCodeOption) (identity.LoginState, string)
	// Finish checks the issuer's redirect against st, trades the code and
	// verifies the ID token; the principal's Issuer is the configured name
	// of the admin issuer.
	Finish(ctx context.Context, st identity.LoginState, q url.Values) (broker.Principal, error)
}

// Approvals is what the approvals inbox needs of step-up (stepup.Service).
type Approvals interface {
	ListApprovals(ctx context.Context, q stepup.ApprovalQuery) ([]stepup.Approval, string, error)
	DecideApproval(ctx context.Context, who, id string, approve bool, reason string) (stepup.Approval, error)
}

// Trail is what the live view and the chain status read of the audit
// trail. Implementations must be safe for concurrent use.
type Trail interface {
	// Recent returns up to n of the newest events after cursor ("" for the
	// newest n), oldest first, and the cursor of the newest one.
	Recent(ctx context.Context, after string, n int) ([]broker.Event, string, error)
	// Verify checks the whole chain.
	Verify(ctx context.Context) (ChainStatus, error)
}

// ChainStatus is what a check of the audit chain found.
type ChainStatus struct {
	// Events is how many events verified; Chains gives, per writer's
	// chain, the last sequence number verified.
	Events int
	Chains map[string]uint64
	// Broken is the first problem found ("" when every link holds).
	Broken string
}

// Config wires the console.
type Config struct {
	// Admin is the admin API's logic: every page and action goes through
	// its role rules and functions.
	Admin *incident.Admin
	// SignIn is the admin issuer's relying party.
	SignIn SignIn
	// Approvals, when set, serves the approvals inbox; Trail, when set,
	// the live view and the chain status.
	Approvals Approvals
	Trail     Trail
	// PublicURL is the broker's public URL: cookies are Secure unless it
	// is http on a loopback host.
	PublicURL string
	// SessionTTL caps a session (default 8h; the ID token's exp caps it
	// too).
	SessionTTL time.Duration
	Logger     *slog.Logger
	Now        func() time.Time
}

// Console serves the web console. It is safe for concurrent use.
type Console struct {
	cfg      Config
	sessions *sessions
	pages    map[string]*template.Template
	secure   bool
	log      *slog.Logger
	now      func() time.Time
}

// Cookie names. The session cookie is SameSite=Strict; the sign-in cookie
// must come back with the issuer's redirect, a cross-site navigation, so
// it is Lax (and lives ten minutes, for one sign-in).
const (
	sessionCookie = "valet_console"
	signinCookie  = "valet_console_signin"
)

// New checks cfg and parses the pages.
func New(cfg Config) (*Console, error) {
	switch {
	case cfg.Admin == nil:
		return nil, errors.New("console: admin cannot be nil (the console needs the admin API)")
	case cfg.SignIn == nil:
		return nil, errors.New("console: sign-in cannot be nil")
	}
	u, err := url.Parse(cfg.PublicURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("console: public URL %q is not an absolute URL", cfg.PublicURL)
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 8 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Console{cfg: cfg, sessions: newSessions(cfg.Now), pages: map[string]*template.Template{}, log: cfg.Logger, now: cfg.Now,
		secure: u.Scheme == "https" || !loopbackHost(u.Hostname())}
	funcs := template.FuncMap{"ago": c.ago, "short": short, "join": strings.Join, "pct": pct, "fmtTime": fmtTime}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		if strings.HasSuffix(n, "/layout.html") {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("console: parsing %s: %w", n, err)
		}
		c.pages[strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")] = t
	}
	return c, nil
}

func loopbackHost(h string) bool {
	return h == "localhost" || h == "::1" || strings.HasPrefix(h, "127.")
}

// Handler serves the console under /console.
func (c *Console) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(c.headers)
	static, _ := fs.Sub(staticFS, "static")
	r.Handle("/console/static/*", http.StripPrefix("/console/static/", http.FileServerFS(static)))
	r.Get("/console", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/console/", http.StatusSeeOther) })
	r.Get("/console/signin", c.signin)
	r.Get("/console/callback", c.callback)
	r.Post("/console/signout", c.signout)
	r.Get("/console/", c.page(incident.RoleViewer, "console.overview", c.overview))
	r.Get("/console/live", c.page(incident.RoleViewer, "console.live", c.live))
	r.Get("/console/tasks", c.page(incident.RoleViewer, "tasks.read", c.tasks))
	r.Get("/console/tasks/{id}", c.page(incident.RoleViewer, "tasks.timeline", c.task))
	r.Get("/console/agents", c.page(incident.RoleViewer, "agents.read", c.agents))
	r.Get("/console/agents/{id}", c.page(incident.RoleViewer, "agents.read", c.agent))
	r.Get("/console/jobs/{id}", c.page(incident.RoleViewer, "revocation.read", c.job))
	r.Get("/console/jobs/{id}/progress", c.page(incident.RoleViewer, "revocation.read", c.jobProgress))
	r.Get("/console/approvals", c.page(incident.RoleViewer, "approvals.read", c.approvals))
	r.Get("/console/audit", c.page(incident.RoleViewer, "audit.verify", c.auditStatus))
	r.Post("/console/preview", c.action(incident.RoleResponder, "console.preview", c.preview))
	r.Post("/console/act", c.action(incident.RoleResponder, "console.act", c.act))
	r.Post("/console/controls/lift", c.action(incident.RoleAdmin, "controls.lift", c.lift))
	r.Post("/console/approvals/{id}/{decision}", c.action(incident.RoleResponder, "approvals.decide", c.decide))
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		c.fail(w, r, nil, &broker.Error{Code: broker.CodeNotFound, Message: "no such console page"})
	})
	return r
}

// headers sets the console's security headers on every answer: a strict
// CSP (no inline script or style), no framing, no caching, no referrer to other sites (the
// sign-in callback's URL holds the code).
func (c *Console) headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "+
			"base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// view is what every page template gets.
type view struct {
	Title   string
	Who     incident.AdminPrincipal
	CSRF    string
	CanAct  bool // responder or above
	IsAdmin bool
	Data    any
	Error   string
}

type pageFunc func(w http.ResponseWriter, r *http.Request, v *view) (string, error)

// page serves a read: a session, then the admin role rules (and their
// audit) through incident.Admin, then the page.
func (c *Console) page(need incident.Role, action string, fn pageFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, ok := c.session(r)
		if !ok {
			if isPoll(r) {
				c.fail(w, r, nil, broker.Unauthenticated(errors.New("no console session")))
				return
			}
			c.render(w, r, http.StatusUnauthorized, "signin", &view{Title: "Sign in"})
			return
		}
		c.serve(w, r, s, need, action, fn)
	}
}

// isPoll reports whether r is one of the pages' background polls.
func isPoll(r *http.Request) bool {
	return strings.HasSuffix(r.URL.Path, "/progress") || r.URL.Path == "/console/live"
}

// action serves a form post: a session, its CSRF token, the role, then fn.
func (c *Console) action(need incident.Role, action string, fn pageFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
		s, ok := c.session(r)
		if !ok {
			c.fail(w, r, nil, broker.Unauthenticated(errors.New("no console session")))
			return
		}
		if err := r.ParseForm(); err != nil {
			c.fail(w, r, nil, &broker.Error{Code: broker.CodeInvalid, Message: "the form could not be read", Field: "form"})
			return
		}
		if got := r.PostForm.Get("csrf"); got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) != 1 || !c.sameOrigin(r) {
			c.log.WarnContext(r.Context(), "console form refused: missing or wrong CSRF token", "path", r.URL.Path, "admin", s.principal.Subject)
			c.fail(w, r, nil, &broker.Error{Code: broker.CodeForbidden, Message: "this form was not sent from a page of this console (CSRF check failed); reload the page and try again", Field: "csrf"})
			return
		}
		c.serve(w, r, s, need, action, fn)
	}
}

// sameOrigin refuses a post whose Origin (when the browser sends one) is
// not this console's.
func (c *Console) sameOrigin(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

func (c *Console) serve(w http.ResponseWriter, r *http.Request, s session, need incident.Role, action string, fn pageFunc) {
	authorize := c.cfg.Admin.AuthorizeSignedIn
	if r.Method == http.MethodGet && isPoll(r) {
		authorize = c.cfg.Admin.RoleOfSignedIn // the page that polls was audited when opened
	}
	who, err := authorize(r.Context(), s.principal, need, action)
	if err != nil {
		c.fail(w, r, nil, err)
		return
	}
	v := &view{Who: who, CSRF: s.csrf, CanAct: who.Role >= incident.RoleResponder, IsAdmin: who.Role >= incident.RoleAdmin}
	name, err := fn(w, r, v)
	if err != nil {
		c.fail(w, r, v, err)
		return
	}
	if name != "" {
		c.render(w, r, http.StatusOK, name, v)
	}
}

func (c *Console) session(r *http.Request) (session, bool) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return session{}, false
	}
	return c.sessions.get(ck.Value)
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, name string, v *view) {
	t, ok := c.pages[name]
	if !ok {
		c.log.ErrorContext(r.Context(), "console page missing", "page", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := t.Execute(w, v); err != nil {
		c.log.ErrorContext(r.Context(), "rendering a console page failed", "page", name, "err", err)
	}
}

// fail answers an error: JSON for the scripts' endpoints, else a page that
// says what went wrong (a broker.Error's message, which is written for
// callers).
func (c *Console) fail(w http.ResponseWriter, r *http.Request, v *view, err error) {
	status, msg := http.StatusInternalServerError, "internal error"
	var be *broker.Error
	if errors.As(err, &be) {
		status, msg = statusOf(be.Code), be.Message
		if be.Field != "" {
			msg += " (field " + be.Field + ")"
		}
	}
	if status >= 500 {
		c.log.ErrorContext(r.Context(), "console request failed", "path", r.URL.Path, "err", err)
	}
	if strings.HasSuffix(r.URL.Path, "/progress") || r.URL.Path == "/console/live" {
		writeJSON(w, status, map[string]string{"error": msg})
		return
	}
	if v == nil {
		v = &view{}
	}
	v.Title, v.Error = "Error", msg
	c.render(w, r, status, "error", v)
}

// statusOf maps a domain error code to the status the admin API answers
// with (broker/httpapi's table).
func statusOf(c broker.Code) int {
	switch c {
	case broker.CodeInvalid:
		return http.StatusBadRequest
	case broker.CodeUnauthenticated:
		return http.StatusUnauthorized
	case broker.CodeForbidden:
		return http.StatusForbidden
	case broker.CodeNotFound:
		return http.StatusNotFound
	case broker.CodeConflict:
		return http.StatusConflict
	case broker.CodeUnavailable:
		return http.StatusServiceUnavailable
	case broker.CodeTooManyRequests:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}
