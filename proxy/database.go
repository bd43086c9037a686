package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/proxy/pgwire"
	"github.com/valet-dev/valet/verify"
)

// Database resolves the PostgreSQL listener's logins (package pgwire): the
// password an agent sends is its task handle, and the session logs in to
// the configured server as the task's own Vault database role. The session
// lives while the task does: pgwire closes it when Task.Done closes. A
// task's template must have a postgres upstream whose tool was granted to
// the task; each session is reported as two tool-call events of that tool
// in the task's timeline (opened, closed).
type Database struct {
	p    *Proxy
	addr string
	tls  *tls.Config
}

// Database serves logins to the PostgreSQL server at addr (host:port),
// over TLS when tlsConfig is set.
func (p *Proxy) Database(addr string, tlsConfig *tls.Config) *Database {
	return &Database{p: p, addr: addr, tls: tlsConfig}
}

var _ pgwire.Resolver = (*Database)(nil)

// maxSessionEffect bounds a session event's text (Valet takes 1,024 bytes).
const maxSessionEffect = 960

// Resolve implements pgwire.Resolver. Its errors are shown to the agent:
// they name the task and the tool at most, never a credential. Each
// refusal is audited as proxy.refused, like an HTTP call's.
func (d *Database) Resolve(ctx context.Context, _, database, handle string) (pgwire.Session, error) {
	refuse := func(taskID, rule string, err error) (pgwire.Session, error) {
		d.p.auditTask(ctx, nil, taskID, rule, "database login: "+err.Error())
		return pgwire.Session{}, err
	}
	t, ended := d.p.lookup(handle)
	switch {
	case ended != nil:
		return refuse(ended.id, "task_ended", fmt.Errorf("task %s has ended (%s)", ended.id, ended.reason))
	case t == nil:
		return refuse("", "handle", errors.New("unknown task handle: connect with the handle valet proxy gave for the task as the password"))
	}
	if t.jkt != "" {
		return refuse(t.ID, "dpop", fmt.Errorf("task %s: its handle is bound to a DPoP key, and a PostgreSQL login cannot carry a DPoP proof: declare without DPoP for database sessions", t.ID))
	}
	tmpl, _ := d.p.cfg.Templates.Get(t.Template)
	if tmpl == nil || tmpl.Postgres == nil {
		return refuse(t.ID, "upstream", fmt.Errorf("task %s: template %q has no postgres upstream, which names the tool its database sessions report as", t.ID, t.Template))
	}
	pg := tmpl.Postgres
	if !t.Granted(pg.Tool) {
		return refuse(t.ID, "tool", fmt.Errorf("task %s was not granted tool %q, which database sessions need (postgres upstream %q)", t.ID, pg.Tool, pg.Name))
	}
	// The same check as an HTTP call's: the task token is still good by
	// what Valet's feed (or introspection) says, not only by the watcher's
	// last pass. A proxy built without a verifier (tests of this file)
	// relies on the watcher alone and reports nothing.
	var report func(status int, effect string)
	if d.p.verifier != nil {
		claims, err := d.p.check(ctx, t, pg.Tool)
		if err != nil {
			return refuse(t.ID, "task_ended", fmt.Errorf("task %s may not act: %v", t.ID, err))
		}
		// The request carrying the task token is kept for the closing
		// event: the task may have ended (and forgotten its token) by
		// then, and Valet takes the proxy's late report with its client
		// credentials. It lives as long as the session, in memory only.
		req, err := d.p.tokenRequest(context.WithoutCancel(ctx), t)
		if err != nil {
			return refuse(t.ID, "task_ended", fmt.Errorf("task %s may not act: %v", t.ID, err))
		}
		report = func(status int, effect string) {
			d.p.verifier.Report(req, claims, pg.Tool, status, verify.Effect{SideEffect: broker.Bound(effect, maxSessionEffect)})
		}
	}
	user, password, ok := t.DatabaseLogin()
	if !ok {
		return refuse(t.ID, "credential", fmt.Errorf("task %s holds no database login (its template mints no Vault database credential)", t.ID))
	}
	s := pgwire.Session{
		Target: pgwire.Target{Addr: d.addr, User: user, Password: password, Database: database, TLS: d.tls},
		TaskID: t.ID, Done: t.Done(), SQLText: pg.SQLText,
	}
	if report != nil {
		s.Opened = func(e pgwire.Event) { report(http.StatusOK, sessionOpened(e)) }
		s.Closed = func(e pgwire.Event) { report(sessionStatus(e.EndReason), sessionClosed(e)) }
	}
	return s, nil
}

// sessionOpened is the opening event's text: the database (as the agent
// named it, bounded and quoted) and the role's name, never its password.
func sessionOpened(e pgwire.Event) string {
	return fmt.Sprintf("postgres session opened: database %s as role %s", quoted(e.Database), quoted(e.User))
}

// sessionClosed is the closing event's text: why, how long, bytes each
// way, statements, and their text only when the template opted in.
func sessionClosed(e pgwire.Event) string {
	s := fmt.Sprintf("postgres session closed (%s) after %d ms: %d queries, %d bytes in, %d bytes out",
		e.EndReason, e.Duration.Milliseconds(), e.Queries, e.BytesIn, e.BytesOut)
	if len(e.Statements) > 0 {
		s += "; first statements: " + strings.Join(e.Statements, ", ")
	}
	return s
}

// sessionStatus is the status a closing event reports: 200 when the
// agent closed the session, else why the proxy or the server did.
func sessionStatus(reason string) int {
	switch reason {
	case pgwire.EndClient:
		return http.StatusOK
	case pgwire.EndTask:
		return http.StatusGone
	case pgwire.EndServer:
		return http.StatusBadGateway
	case pgwire.EndStopped:
		return http.StatusServiceUnavailable
	}
	return http.StatusBadRequest
}

// quoted bounds and quotes a name for an event (ASCII, Go syntax).
func quoted(s string) string { return strconv.QuoteToASCII(broker.Bound(s, 64)) }
