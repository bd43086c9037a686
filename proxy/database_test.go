package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/internal/pgtest"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/proxy/pgwire"
)

// TestDatabaseListener: an agent logs in to the proxy's PostgreSQL
// listener with only its task handle and works as the task's own role; a
// task without a database login, one whose template has no postgres
// upstream or that was not granted its tool, an unknown handle and an
// ended task are refused by name; ending the task closes the open session.
func TestDatabaseListener(t *testing.T) {
	pg := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, "CREATE ROLE v_task_role LOGIN PASSWORD 'db-canary-secret'"); err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(`templates:
  - name: t
    principals: [{issuer: dev}]
    ttl: {default: 5m, max: 10m}
    tools: [db.query, db.admin]
    audiences: [valet-proxy]
    upstreams:
      - {name: appdb, postgres: {tool: db.query}}
  - name: nopg
    principals: [{issuer: dev}]
    ttl: {default: 5m, max: 10m}
    tools: [db.query]
    audiences: [valet-proxy]
`)}}, []string{"dev"})
	if err != nil {
		t.Fatal(err)
	}
	var trail bytes.Buffer
	p := &Proxy{cfg: Config{Logger: slog.New(slog.DiscardHandler), Templates: set, Auditor: audit.NewLog(&trail), Now: time.Now},
		byHandle: map[[32]byte]*Task{}, byID: map[string]*Task{}, ended: map[[32]byte]endedTask{}}
	newTask := func(id, handle, template string, tools []string, c credentials) *Task {
		tctx, tcancel := context.WithCancel(context.Background())
		task := &Task{ID: id, Template: template, Tools: tools, Deadline: time.Now().Add(time.Hour),
			handle: sha256.Sum256([]byte(handle)), creds: c, ctx: tctx, cancel: tcancel}
		p.add(task)
		return task
	}
	dbLogin := credentials{taskToken: "jwt", dbUser: "v_task_role", dbSecret: "db-canary-secret"}
	withDB := newTask("tsk_db", "vph_with_db", "t", []string{"db.query"}, dbLogin)
	newTask("tsk_nodb", "vph_without_db", "t", []string{"db.query"}, credentials{taskToken: "jwt"})
	newTask("tsk_nopg", "vph_no_pg_upstream", "nopg", []string{"db.query"}, dbLogin)
	newTask("tsk_notool", "vph_no_tool", "t", []string{"db.admin"}, dbLogin)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &pgwire.Server{Resolver: p.Database(pg.Addr(), nil), Logger: slog.New(slog.DiscardHandler)}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	dsn := func(handle string) string {
		return (&url.URL{Scheme: "postgresql", User: url.UserPassword("agent", handle), Host: ln.Addr().String(),
			Path: "/postgres", RawQuery: "sslmode=disable"}).String()
	}
	refused := func(handle, want string) {
		t.Helper()
		_, err := pgx.Connect(ctx, dsn(handle))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || !strings.Contains(pe.Message, want) {
			t.Fatalf("login with %s: %v, want a refusal saying %q", handle, err, want)
		}
		if strings.Contains(err.Error(), "db-canary-secret") {
			t.Fatal("a refusal quoted the database password")
		}
	}

	conn, err := pgx.Connect(ctx, dsn("vph_with_db"))
	if err != nil {
		t.Fatalf("login with the handle: %v", err)
	}
	var who string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil || who != "v_task_role" {
		t.Fatalf("current_user %q, %v; want the task's role", who, err)
	}
	refused("vph_without_db", "holds no database login")
	refused("vph_no_pg_upstream", `template "nopg" has no postgres upstream`)
	refused("vph_no_tool", `was not granted tool "db.query"`)
	refused("vph_unknown", "unknown task handle")
	refused("not-a-handle", "unknown task handle")

	p.end(withDB, "revoked")
	if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
		t.Fatal("the session outlived its task")
	}
	refused("vph_with_db", "has ended (revoked)")
	// Each refusal is audited once, by rule, without the password.
	for rule, n := range map[string]int{"credential": 1, "upstream": 1, "tool": 1, "handle": 2, "task_ended": 1} {
		if got := strings.Count(trail.String(), `"rule":"`+rule+`"`); got != n {
			t.Errorf("%d refusals audited with rule %s, want %d", got, rule, n)
		}
	}
	if strings.Contains(trail.String(), "db-canary-secret") || strings.Contains(trail.String(), "vph_") {
		t.Error("the audit holds the password or a handle")
	}
}
