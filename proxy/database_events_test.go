package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/valet-dev/valet/internal/pgtest"
	"github.com/valet-dev/valet/proxy/pgwire"
	"github.com/valet-dev/valet/toolevents"
)

const dbTemplates = `
templates:
  - name: db
    principals: [{issuer: test}]
    ttl: {default: 5m, max: 10m}
    tools: [db.query, kb.read]
    audiences: [valet-proxy]
    upstreams:
      - name: appdb
        postgres: {tool: db.query}
  - name: dbsql
    principals: [{issuer: test}]
    ttl: {default: 5m, max: 10m}
    tools: [db.query]
    audiences: [valet-proxy]
    upstreams:
      - name: appdb
        postgres: {tool: db.query, sql_text: true}
`

const dbCanary = "db-canary-password-5b2e"

// TestDatabaseSessionEvents: every PostgreSQL session through the proxy is
// two tool-call events in the task's timeline, reported by the proxy and
// read back as a responder reads them: opened (database, role name) and
// closed (why, duration, bytes each way, statements), with no SQL text
// unless the template opts in, and then bounded and escaped; never the
// role's password. A session the task's end cuts is reported as such, and
// a task not granted the postgres upstream's tool cannot log in.
func TestDatabaseSessionEvents(t *testing.T) {
	pg := pgtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := pg.Exec(ctx, "CREATE ROLE v_task_role LOGIN PASSWORD '"+dbCanary+"'"); err != nil {
		t.Fatal(err)
	}
	st := newStack(t, dbTemplates, Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &pgwire.Server{Resolver: st.p.Database(pg.Addr(), nil), Logger: slog.New(slog.NewJSONHandler(st.logs, nil))}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	dsn := func(handle string) string {
		return (&url.URL{Scheme: "postgresql", User: url.UserPassword("agent", handle), Host: ln.Addr().String(),
			Path: "/postgres", RawQuery: "sslmode=disable"}).String()
	}
	// The task's Vault database lease, as a declaration with a Vault
	// database role would have given it (Vault is not part of this test).
	withLogin := func(id string) {
		st.p.mu.RLock()
		task := st.p.byID[id]
		st.p.mu.RUnlock()
		task.mu.Lock()
		task.creds.dbUser, task.creds.dbSecret = "v_task_role", dbCanary
		task.mu.Unlock()
	}
	effects := func(evs []toolevents.ToolEvent) []string {
		var out []string
		for _, e := range evs {
			if e.Tool != "db.query" || e.Reporter != "client:"+stackClient {
				t.Errorf("event %+v: want tool db.query reported by the proxy's client", e)
			}
			out = append(out, e.SideEffect)
		}
		return out
	}

	t.Run("OpenedAndClosedByTheClient", func(t *testing.T) {
		id, handle, _ := st.declare(t, "db", nil, "db.query")
		withLogin(id)
		conn, err := pgx.Connect(ctx, dsn(handle))
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"SELECT 1", "SELECT 'secret-looking literal'", "CREATE TEMP TABLE x (a int)"} {
			if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT $1::int + 1", 41).Scan(&n); err != nil || n != 42 {
			t.Fatalf("extended query: %d %v", n, err)
		}
		if err := conn.Close(ctx); err != nil {
			t.Fatal(err)
		}
		evs := st.events(t, id, 2)
		got := effects(evs)
		if len(got) != 2 || got[0] != `postgres session opened: database "postgres" as role "v_task_role"` || evs[0].Status != 200 {
			t.Fatalf("events %q", got)
		}
		// 3 simple queries and 1 Parse of the extended protocol.
		if !strings.HasPrefix(got[1], "postgres session closed (client_closed) after ") || !strings.Contains(got[1], ": 4 queries, ") ||
			strings.Contains(got[1], " 0 bytes") || evs[1].Status != 200 || evs[1].Outcome != "ok" {
			t.Fatalf("closing event %q (status %d)", got[1], evs[1].Status)
		}
		if strings.Contains(got[1], "SELECT") || strings.Contains(got[1], "literal") {
			t.Fatalf("SQL text in the closing event without the template's opt-in: %q", got[1])
		}
		t.Logf("timeline: %q", got)
	})

	t.Run("SQLTextWhenTheTemplateOptsIn", func(t *testing.T) {
		id, handle, _ := st.declare(t, "dbsql", nil, "db.query")
		withLogin(id)
		conn, err := pgx.Connect(ctx, dsn(handle))
		if err != nil {
			t.Fatal(err)
		}
		long := "SELECT '" + strings.Repeat("x", 300) + "'"
		for _, q := range []string{"SELECT 1", "SELECT '\"quoted\"\n\x1b[31mred'", long} {
			if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
		}
		_ = conn.Close(ctx)
		got := effects(st.events(t, id, 2))
		if len(got) != 2 {
			t.Fatalf("events %q", got)
		}
		want := `first statements: "SELECT 1", "SELECT '\"quoted\"\n\x1b[31mred'", "SELECT '` + strings.Repeat("x", 88) + `"…[+213 bytes]`
		if !strings.Contains(got[1], want) || strings.ContainsAny(got[1], "\n\x1b") {
			t.Fatalf("closing event %q, want it to hold %q", got[1], want)
		}
	})

	t.Run("TaskEndClosesAndReports", func(t *testing.T) {
		id, handle, _ := st.declare(t, "db", nil, "db.query")
		withLogin(id)
		conn, err := pgx.Connect(ctx, dsn(handle))
		if err != nil {
			t.Fatal(err)
		}
		if status, _, body := st.do(t, http.MethodPost, "/v1/tasks/"+id+"/complete", nil, http.Header{"Authorization": {"Bearer " + handle}}); status != http.StatusOK {
			t.Fatalf("complete: %d %s", status, body)
		}
		start := time.Now()
		for conn.Ping(ctx) == nil {
			if time.Since(start) > 5*time.Second {
				t.Fatal("the session outlived its task")
			}
			time.Sleep(5 * time.Millisecond)
		}
		evs := st.events(t, id, 2)
		got := effects(evs)
		if len(got) != 2 || !strings.HasPrefix(got[1], "postgres session closed (task_ended) after ") || evs[1].Status != http.StatusGone || evs[1].Outcome != "error" {
			t.Fatalf("events %q", got)
		}
	})

	t.Run("ToolNotGranted", func(t *testing.T) {
		id, handle, _ := st.declare(t, "db", nil, "kb.read")
		withLogin(id)
		_, err := pgx.Connect(ctx, dsn(handle))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || !strings.Contains(pe.Message, `was not granted tool "db.query"`) {
			t.Fatalf("login of a task without db.query: %v", err)
		}
		if evs := st.events(t, id, 0); len(evs) != 0 {
			t.Fatalf("a refused login was reported: %+v", evs)
		}
	})

	for what, text := range map[string]string{"the proxy's log": st.logs.String(), "the proxy's audit": st.trail.String(), "Valet's audit": st.valetAudit.String()} {
		if strings.Contains(text, dbCanary) {
			t.Errorf("%s holds the role's password", what)
		}
	}
}
