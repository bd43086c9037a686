package issuers

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// DatabaseLogins looks in the database itself for the logins a task's
// database leases made, so a revocation is confirmed where it matters and
// not assumed from Vault's answer (Vault may have lost the lease, or failed
// to run its revocation statements). Implementations must be safe for
// concurrent use.
type DatabaseLogins interface {
	// Live lists the task's logins whose names begin with prefix
	// (TokenLoginPrefix or TaskLoginPrefix) that can still act: roles that
	// may still log in, or that still have a session open.
	Live(ctx context.Context, taskID, prefix string) ([]string, error)
}

// TaskLoginPrefix is how every database username made with a task's token
// begins, when the database role's username_template is the one in
// deploy/vault/db-username-template: "v-" and the token's display name,
// which Vault makes "token-" plus the one Valet gives ("valet-<task id>"),
// with every character but letters, digits and '-' turned into '-'.
func TaskLoginPrefix(taskID string) string {
	name := []byte("token-valet-" + taskID)
	for i, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			name[i] = '-'
		}
	}
	return "v-" + string(name) + "-"
}

// newLoginTag draws the tag a task token carries in its display name (and
// in its metadata, MetaLoginTag): 5 random characters of [a-z0-9]. With it,
// "token-valet-", a 30-character task id, '-' and the tag fill the 48
// characters the username template keeps of a display name.
func newLoginTag() (string, error) {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b), nil
}

// TokenLoginPrefix is how every database username made with one task token
// begins: TaskLoginPrefix, the token's tag and '-'. The tag holds no '-' and
// Vault's random part of a username holds none either, so one token's
// prefix never matches another token's logins.
func TokenLoginPrefix(taskID, tag string) string {
	return TaskLoginPrefix(taskID) + tag + "-"
}

// PostgresLogins implements DatabaseLogins for PostgreSQL. Any login role
// will do: pg_roles and the usesysid of pg_stat_activity are readable by
// every role, so give it one that can do nothing else.
type PostgresLogins struct {
	url string
}

// NewPostgresLogins checks url (a PostgreSQL connection URL) and returns
// the checker. It connects at each check, never at start-up.
func NewPostgresLogins(url string) (*PostgresLogins, error) {
	if url == "" {
		return nil, errors.New("database logins check: the connection URL cannot be empty")
	}
	if _, err := pgx.ParseConfig(url); err != nil {
		return nil, errors.New("database logins check: the connection URL does not parse") // the error would echo the password
	}
	return &PostgresLogins{url: url}, nil
}

// Live implements DatabaseLogins.
func (p *PostgresLogins) Live(ctx context.Context, taskID, prefix string) ([]string, error) {
	if !strings.HasPrefix(prefix, TaskLoginPrefix(taskID)) {
		return nil, fmt.Errorf("checking task %s's database logins: prefix %q is not the task's", taskID, prefix)
	}
	conn, err := pgx.Connect(ctx, p.url)
	if err != nil {
		return nil, fmt.Errorf("connecting to the database to check task %s's logins: %w", taskID, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT r.rolname FROM pg_roles r
		WHERE starts_with(r.rolname, $1)
		  AND ((r.rolcanlogin AND (r.rolvaliduntil IS NULL OR r.rolvaliduntil > now()))
		       OR EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.usesysid = r.oid))
		ORDER BY r.rolname`, prefix)
	if err != nil {
		return nil, fmt.Errorf("checking task %s's database logins: %w", taskID, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("checking task %s's database logins: %w", taskID, err)
	}
	return names, nil
}

// confirmLoginsGone waits, until ctx ends, for the database to hold no
// live login under prefix (one token's, or the whole task's): Vault revokes a token's other leases in the
// background, so they may take a moment.
func (v *Vault) confirmLoginsGone(ctx context.Context, taskID, prefix string) error {
	for {
		live, err := v.logins.Live(ctx, taskID, prefix)
		if err == nil && len(live) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("confirming task %s's database logins are gone: %w: %w", taskID, errUnconfirmed, err)
			}
			return fmt.Errorf("task %s still has %d live database login(s) (%s): %w", taskID, len(live), strings.Join(live, ", "), errUnconfirmed)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// errUnconfirmed: the database still shows a login Vault says it revoked.
var errUnconfirmed = errors.New("revocation not confirmed at the database")
