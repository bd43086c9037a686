package pgwire_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/valet-dev/valet/internal/pgtest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/proxy/pgwire"
)

// resolver maps handles to sessions, as the proxy's task table does.
type resolver struct {
	mu       sync.Mutex
	sessions map[string]pgwire.Session
	calls    int
}

func (r *resolver) Resolve(_ context.Context, _, _, handle string) (pgwire.Session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	s, ok := r.sessions[handle]
	if !ok {
		return pgwire.Session{}, errors.New("unknown or expired task handle")
	}
	return s, nil
}

func (r *resolver) add(handle string, s pgwire.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sessions[handle] = s
}

// recordingListener keeps every byte the proxy wrote to agents, for the
// canary scan.
type recordingListener struct {
	net.Listener
	mu  sync.Mutex
	out bytes.Buffer
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &recordingConn{Conn: c, l: l}, nil
}

func (l *recordingListener) sent() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return bytes.Clone(l.out.Bytes())
}

type recordingConn struct {
	net.Conn
	l *recordingListener
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.l.mu.Lock()
	c.l.out.Write(p)
	c.l.mu.Unlock()
	return c.Conn.Write(p)
}

type world struct {
	pg       *pgtest.Server
	res      *resolver
	srv      *pgwire.Server
	ln       *recordingListener
	role     string
	password string
	events   chan pgwire.Event
}

// TestPgwire starts one private PostgreSQL cluster (scram-sha-256) for
// every case: a cluster takes seconds to start.
func TestPgwire(t *testing.T) {
	pg := pgtest.Start(t)
	if err := pg.Exec(context.Background(), fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", taskRole, taskPassword)); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(*testing.T, *pgtest.Server){
		"AgentQueriesWithOnlyItsHandle": testAgentQueriesWithOnlyItsHandle,
		"ForeignHandleIsRefused":        testForeignHandleIsRefused,
		"EndedTaskIsRefusedAtConnect":   testEndedTaskIsRefusedAtConnect,
		"TaskEndClosesOpenSessions":     testTaskEndClosesOpenSessions,
		"CancelRequestReachesTheServer": testCancelRequestReachesTheServer,
		"PsqlThroughTheProxy":           testPsqlThroughTheProxy,
	} {
		t.Run(name, func(t *testing.T) { f(t, pg) })
	}
}

const taskRole = "task_role_1"

var taskPassword = "canary-" + strings.Repeat("7f", 12)

func newWorld(t *testing.T, pg *pgtest.Server) *world {
	t.Helper()
	w := &world{pg: pg, res: &resolver{sessions: map[string]pgwire.Session{}}, role: taskRole,
		password: taskPassword, events: make(chan pgwire.Event, 256)}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.ln = &recordingListener{Listener: inner}
	w.srv = &pgwire.Server{Resolver: w.res, HandshakeTimeout: 5 * time.Second, MaxConns: 8,
		OnEnd: func(e pgwire.Event) { w.events <- e }}
	go func() { _ = w.srv.Serve(w.ln) }()
	t.Cleanup(func() { _ = w.srv.Close() })
	return w
}

// session adds a handle for the task role and returns the handle and the
// function that ends the task.
func (w *world) session(taskID string) (handle string, end func()) {
	done := make(chan struct{})
	handle = "vh_" + taskID + "_" + strings.Repeat("x", 20)
	w.res.add(handle, pgwire.Session{TaskID: taskID, Done: done,
		Target: pgwire.Target{Addr: w.pg.Addr(), User: w.role, Password: w.password, Database: "postgres"}})
	var once sync.Once
	return handle, func() { once.Do(func() { close(done) }) }
}

func (w *world) url(handle string) string {
	u := url.URL{Scheme: "postgresql", User: url.UserPassword("agent", handle), Host: w.ln.Addr().String(),
		Path: "/postgres", RawQuery: "sslmode=prefer"}
	return u.String()
}

func testAgentQueriesWithOnlyItsHandle(t *testing.T, pg *pgtest.Server) {
	w := newWorld(t, pg)
	handle, _ := w.session("task-a")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, w.url(handle))
	if err != nil {
		t.Fatalf("connect through the proxy: %v", err)
	}
	var who string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil {
		t.Fatal(err)
	}
	if who != w.role {
		t.Errorf("current_user = %q, want the task's role %q", who, w.role)
	}
	// Prepared statements and a transaction work across the relay.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow(ctx, "SELECT $1::int + 1", 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("parameterised query: %d, %v", n, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := conn.Close(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-w.events:
		// Two Parse messages (the extended protocol) and begin and
		// commit (simple queries); no text without SQLText.
		if e.TaskID != "task-a" || e.EndReason != pgwire.EndClient || e.BytesIn == 0 || e.BytesOut == 0 || e.Queries != 4 || e.Statements != nil {
			t.Errorf("session event = %+v", e)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no session event")
	}
	if bytes.Contains(w.ln.sent(), []byte(w.password)) {
		t.Fatal("the role's password reached the agent")
	}
}

func testForeignHandleIsRefused(t *testing.T, pg *pgtest.Server) {
	w := newWorld(t, pg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, h := range []string{"vh_not-a-handle", w.password} {
		_, err := pgx.Connect(ctx, w.url(h))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28P01" || !strings.Contains(pe.Message, "handle") {
			t.Fatalf("connect with %q: %v, want SQLSTATE 28P01 naming the handle", h[:8], err)
		}
	}
}

func testEndedTaskIsRefusedAtConnect(t *testing.T, pg *pgtest.Server) {
	w := newWorld(t, pg)
	handle, end := w.session("task-ended")
	end()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, w.url(handle))
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28000" {
		t.Fatalf("connect for an ended task: %v, want 28000", err)
	}
}

// testTaskEndClosesOpenSessions ends tasks with an open session and
// measures how long the agent's session lives on; the figures are logged,
// not asserted (timing belongs to benchmarks).
func testTaskEndClosesOpenSessions(t *testing.T, pg *pgtest.Server) {
	w := newWorld(t, pg)
	trials := 30
	if testing.Short() {
		trials = 10
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var delays []time.Duration
	for i := range trials {
		handle, end := w.session(fmt.Sprintf("task-%d", i))
		conn, err := pgx.Connect(ctx, w.url(handle))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		closed := make(chan time.Time, 1)
		go func() {
			// A long query, cut by the task's end.
			_, _ = conn.Exec(ctx, "SELECT pg_sleep(30)")
			closed <- time.Now()
		}()
		time.Sleep(20 * time.Millisecond)
		at := time.Now()
		end()
		select {
		case c := <-closed:
			delays = append(delays, c.Sub(at))
		case <-time.After(20 * time.Second):
			t.Fatalf("trial %d: the session outlived its task by 20 s", i)
		}
		if !conn.IsClosed() {
			if _, err := conn.Exec(ctx, "SELECT 1"); err == nil {
				t.Fatalf("trial %d: the session still answers after the task ended", i)
			}
		}
		select {
		case e := <-w.events:
			if e.EndReason != pgwire.EndTask {
				t.Fatalf("trial %d: end reason %q, want %q", i, e.EndReason, pgwire.EndTask)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("trial %d: no session event", i)
		}
	}
	sort.Slice(delays, func(i, j int) bool { return delays[i] < delays[j] })
	t.Logf("task end → agent's session closed over %d trials: p50 %v, p99 %v, max %v",
		len(delays), delays[len(delays)/2], delays[(len(delays)*99)/100], delays[len(delays)-1])
}

func testCancelRequestReachesTheServer(t *testing.T, pg *pgtest.Server) {
	w := newWorld(t, pg)
	handle, _ := w.session("task-cancel")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, w.url(handle))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer qcancel()
	_, err = conn.Exec(qctx, "SELECT pg_sleep(25)")
	if err == nil {
		t.Fatal("the sleeping query was not cancelled")
	}
	// The server's backend must stop sleeping: the cancel request went
	// through the proxy with the server's own key.
	super, err := pgx.Connect(ctx, w.pg.URL(pgtest.SuperUser, w.pg.Password()))
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(context.Background())
	testkit.EventuallyWithin(t, 10*time.Second, func() bool {
		var n int
		err := super.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(25)%'").Scan(&n)
		return err == nil && n == 0
	}, "the server still runs the cancelled query")
}

func TestSilentClientIsDroppedAfterTheHandshakeTimeout(t *testing.T) {
	res := &resolver{sessions: map[string]pgwire.Session{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &pgwire.Server{Resolver: res, HandshakeTimeout: 200 * time.Millisecond, MaxConns: 1}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A second connection while the silent one holds the only slot is
	// refused with 53300 (too many connections).
	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, _ := c2.Read(buf)
	c2.Close()
	if !bytes.Contains(buf[:n], []byte("53300")) {
		t.Errorf("second connection got %q, want SQLSTATE 53300", buf[:n])
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err == nil {
		t.Fatal("the silent connection was not closed")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the silent connection was still open after 5 s")
	}
	if res.calls != 0 {
		t.Errorf("resolver called %d times for connections that sent no handle", res.calls)
	}
}

// testPsqlThroughTheProxy drives the real psql client (libpq), which asks
// for TLS first (sslmode=prefer) and falls back to the plain listener.
func testPsqlThroughTheProxy(t *testing.T, pg *pgtest.Server) {
	bin := os.Getenv(pgtest.BinDirEnv)
	if bin == "" {
		bin = pgtest.DefaultBinDir
	}
	psql := filepath.Join(bin, "psql")
	if _, err := os.Stat(psql); err != nil {
		if psql, err = exec.LookPath("psql"); err != nil {
			t.Skip("psql not found (Debian package postgresql-client)")
		}
	}
	w := newWorld(t, pg)
	handle, _ := w.session("task-psql")
	host, port, _ := net.SplitHostPort(w.ln.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-c", "SELECT current_user",
		fmt.Sprintf("host=%s port=%s user=agent dbname=postgres sslmode=prefer", host, port))
	cmd.Env = append(os.Environ(), "PGPASSWORD="+handle)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != w.role {
		t.Errorf("psql printed %q, want %q", got, w.role)
	}
	if bytes.Contains(out, []byte(w.password)) || bytes.Contains(w.ln.sent(), []byte(w.password)) {
		t.Fatal("the role's password reached the agent")
	}
}
