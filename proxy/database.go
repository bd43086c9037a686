package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/valet-dev/valet/proxy/pgwire"
)

// Database resolves the PostgreSQL listener's logins (package pgwire): the
// password an agent sends is its task handle, and the session logs in to
// the configured server as the task's own Vault database role. The session
// lives while the task does: pgwire closes it when Task.Done closes.
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

// Resolve implements pgwire.Resolver. Its errors are shown to the agent:
// they name the task at most, never a credential.
func (d *Database) Resolve(ctx context.Context, _, database, handle string) (pgwire.Session, error) {
	t, ended := d.p.lookup(handle)
	switch {
	case ended != nil:
		return pgwire.Session{}, fmt.Errorf("task %s has ended (%s)", ended.id, ended.reason)
	case t == nil:
		return pgwire.Session{}, errors.New("unknown task handle: connect with the handle valet proxy gave for the task as the password")
	}
	// The same check as an HTTP call's: the task token is still good by
	// what Valet's feed (or introspection) says, not only by the watcher's
	// last pass. A proxy built without a verifier (tests of this file)
	// relies on the watcher alone.
	if d.p.verifier != nil {
		if _, err := d.p.check(ctx, t, t.Tools[0]); err != nil {
			return pgwire.Session{}, fmt.Errorf("task %s may not act: %v", t.ID, err)
		}
	}
	user, password, ok := t.DatabaseLogin()
	if !ok {
		return pgwire.Session{}, fmt.Errorf("task %s holds no database login (its template mints no Vault database credential)", t.ID)
	}
	return pgwire.Session{
		Target: pgwire.Target{Addr: d.addr, User: user, Password: password, Database: database, TLS: d.tls},
		TaskID: t.ID, Done: t.Done(),
	}, nil
}
