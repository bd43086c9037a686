package e2e

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/valet-dev/valet/internal/vaulttest"
)

// dbSession is a PostgreSQL session the agent opened with its task's
// login and keeps open: it made a large object and a TEMP table (so a plain
// DROP ROLE fails) and holds an open cursor.
type dbSession struct {
	conn *pgx.Conn
	tx   pgx.Tx
}

func (w *vaultWorld) hostileSession(d dbTask) *dbSession {
	w.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, w.pg.URL(d.username, d.password))
	if err != nil {
		w.t.Fatalf("agent login: %v", err)
	}
	w.t.Cleanup(func() { conn.Close(context.Background()) })
	for _, q := range []string{"SELECT lo_create(0)", "CREATE TEMP TABLE scratch (x int)"} {
		if _, err := conn.Exec(ctx, q); err != nil {
			w.t.Fatalf("agent %s: %v", q, err)
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "DECLARE cur CURSOR FOR SELECT * FROM orders"); err != nil {
		w.t.Fatalf("agent cursor: %v", err)
	}
	s := &dbSession{conn: conn, tx: tx}
	if err := s.fetch(); err != nil {
		w.t.Fatalf("agent fetch: %v", err)
	}
	return s
}

// fetch reads one more row through the open cursor.
func (s *dbSession) fetch() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := s.tx.Query(ctx, "FETCH 1 FROM cur")
	if err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

// withOrders gives the world a table every login can read, as the attacked
// deployment had.
func (w *vaultWorld) withOrders() {
	w.t.Helper()
	if err := w.pg.Exec(context.Background(),
		"CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 1000) g; GRANT SELECT ON orders TO PUBLIC"); err != nil {
		w.t.Fatal(err)
	}
}

// mustBeDeadNow checks, without waiting, that the task's login is dead at
// the database: the role is gone, a new login is refused, the open session
// is dead, no orphaned session or large object is left, and Vault no longer
// holds the token or the lease.
func (w *vaultWorld) mustBeDeadNow(d dbTask, s *dbSession) {
	w.t.Helper()
	ctx := context.Background()
	if ok, err := w.pg.RoleExists(ctx, d.username); ok || err != nil {
		w.t.Errorf("role %s still exists after a 2xx (%v)", d.username, err)
	}
	if err := w.pg.Login(ctx, d.username, d.password); err == nil {
		w.t.Error("a new login with the task's credentials works after a 2xx")
	}
	if s != nil {
		if err := s.fetch(); err == nil {
			w.t.Error("the agent's open session still reads rows after a 2xx")
		}
	}
	var orphans, objects int
	conn, err := pgx.Connect(ctx, w.pg.URL("postgres", w.pg.Password()))
	if err != nil {
		w.t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE backend_type = 'client backend' AND usesysid IS NOT NULL AND usesysid NOT IN (SELECT oid FROM pg_roles)`).Scan(&orphans); err != nil {
		w.t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_largeobject_metadata").Scan(&objects); err != nil {
		w.t.Fatal(err)
	}
	if orphans != 0 || objects != 0 {
		w.t.Errorf("%d orphaned session(s), %d large object(s) left", orphans, objects)
	}
	if _, err := w.vault.LookupAccessor(d.accessor); !vaulttest.IsGone(err) {
		w.t.Errorf("task token still in Vault: %v", err)
	}
	if ok, err := w.vault.LeaseExists(d.leaseID); ok || err != nil {
		w.t.Errorf("lease still in Vault: %v %v", ok, err)
	}
}

// endPaths are the three ways a task ends: the agent completes it, RFC 7009
// revokes its token, its deadline passes. Each returns the HTTP status (200
// for the reaper when it ended the task).
var endPaths = []struct {
	name string
	end  func(w *vaultWorld, e *env, d dbTask) int
}{
	{"complete", func(w *vaultWorld, e *env, d dbTask) int {
		r := e.do(http.MethodPost, "/v1/tasks/"+d.id+"/complete", d.taskToken, "", nil, false)
		if r.Status != http.StatusOK {
			w.t.Logf("complete: %s\nrevocation.failed: %v", r.Body, e.auditEvents("revocation.failed"))
		}
		return r.Status
	}},
	{"rfc7009", func(w *vaultWorld, e *env, d dbTask) int {
		r := e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+d.taskToken), true)
		if r.Status != http.StatusOK {
			w.t.Logf("revoke: %s", r.Body)
		}
		return r.Status
	}},
	{"deadline", func(w *vaultWorld, e *env, d dbTask) int {
		w.clock.Advance(d.deadline.Sub(w.clock.Now()) + time.Second)
		if n, err := e.reaper.Once(context.Background()); err != nil || n != 1 {
			w.t.Fatalf("reaper.Once = %d, %v", n, err)
		}
		return http.StatusOK
	}},
}

// TestVaultHostileAgentLosesLogin (issue 17, findings 1 and 2): an agent
// that tries to renew its lease, makes a large object and a TEMP table and
// keeps a cursor open loses all of it when its task ends, by every path,
// before the 2xx: the role is dropped, the session killed.
func TestVaultHostileAgentLosesLogin(t *testing.T) {
	for _, path := range endPaths {
		t.Run(path.name, func(t *testing.T) {
			w := newVaultWorld(t)
			w.withOrders()
			e := w.broker()
			d := w.declareDB(e, 60)
			validUntil := func() time.Time {
				var at time.Time
				conn, err := pgx.Connect(context.Background(), w.pg.URL("postgres", w.pg.Password()))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(context.Background())
				if err := conn.QueryRow(context.Background(), "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", d.username).Scan(&at); err != nil {
					t.Fatal(err)
				}
				return at
			}
			before := validUntil()
			agent := w.vault.Client(d.vaultTok)
			if _, err := agent.Logical().Write("sys/leases/renew", map[string]any{"lease_id": d.leaseID, "increment": 86400}); err == nil {
				t.Error("the task token renewed its own lease")
			}
			if after := validUntil(); !after.Equal(before) {
				t.Errorf("VALID UNTIL moved from %v to %v", before, after)
			}
			// Not even a renewal by someone allowed to renew moves it.
			if _, err := w.vault.Root().Logical().Write("sys/leases/renew", map[string]any{"lease_id": d.leaseID, "increment": 86400}); err != nil {
				t.Fatalf("root renewing the lease: %v", err)
			}
			if after := validUntil(); !after.Equal(before) {
				t.Errorf("a renewal moved VALID UNTIL from %v to %v", before, after)
			}
			t1 := strings.Replace(w.pg.URL(d.username, d.password), "/postgres?", "/template1?", 1)
			if conn, err := pgx.Connect(context.Background(), t1); err == nil {
				conn.Close(context.Background())
				t.Error("the task's login connects to template1, where its revocation cannot reach")
			}
			s := w.hostileSession(d)
			if st := path.end(w, e, d); st != http.StatusOK {
				t.Fatalf("ending the task: %d", st)
			}
			w.mustBeDeadNow(d, s)
		})
	}
}

// TestVaultCreationRefusesReachableDatabase (issue 17, finding 1): the
// revocation statements clean up one database only, so the creation
// statements refuse a login that could connect to another one; once ops
// revoke CONNECT from PUBLIC there, logins are issued again.
func TestVaultCreationRefusesReachableDatabase(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	if err := w.pg.Exec(context.Background(), "CREATE DATABASE other"); err != nil {
		t.Fatal(err)
	}
	r := e.declare(e.identity("agent-7"), `{"template":"db","intent":"look up order 4521","tools":["db.query"]}`)
	// Vault answers the failed creation statement with a 500, which Valet
	// passes on as 503: nothing is issued either way.
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "nothing was issued") {
		t.Fatalf("declare with database other open to PUBLIC: %d %s", r.Status, r.Body)
	}
	if live := liveTaskTokens(t, w.vault.Root()); len(live) != 0 {
		t.Fatalf("task tokens left live: %v", live)
	}
	if err := w.pg.Exec(context.Background(), "REVOKE CONNECT ON DATABASE other FROM PUBLIC"); err != nil {
		t.Fatal(err)
	}
	w.mustLogIn(w.declareDB(e, 300))
}

// TestVaultTaskTokenLacksDefaultPolicy (issue 17, finding 3): a task token
// carries only its template's policies: it cannot renew another task's
// lease, nor park data in wrapping tokens, nor look itself up.
func TestVaultTaskTokenLacksDefaultPolicy(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	attacker, victim := w.declareDB(e, 300), w.declareDB(e, 300)
	agent := w.vault.Client(attacker.vaultTok)
	for _, tc := range []struct {
		name, path string
		body       map[string]any
	}{
		{"renew another task's lease", "sys/leases/renew", map[string]any{"lease_id": victim.leaseID, "increment": 86400}},
		{"wrap data", "sys/wrapping/wrap", map[string]any{"stash": "exfiltrated"}},
		{"look itself up", "auth/token/lookup-self", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.body == nil {
				_, err = agent.Logical().Read(tc.path)
			} else {
				_, err = agent.Logical().Write(tc.path, tc.body)
			}
			if err == nil || !strings.Contains(err.Error(), "permission denied") {
				t.Fatalf("task token may call %s: %v", tc.path, err)
			}
		})
	}
	info, err := w.vault.LookupAccessor(attacker.accessor)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range info.Data["policies"].([]any) {
		if p == "default" {
			t.Fatalf("task token policies = %v", info.Data["policies"])
		}
	}
	// The task still works: Valet read its database login with it.
	w.mustLogIn(victim)
}

// TestVaultDatabaseDownAtCompletion (issue 17, findings 5 and 8): with
// PostgreSQL down, complete cannot drop the role, so it answers 503 (and so
// does a second complete), audits revocation.failed and queues the lease;
// once PostgreSQL is back a retry drops the role and complete answers 200.
func TestVaultDatabaseDownAtCompletion(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker(func(o *envOptions) { o.incident = true }) // with /metrics
	d := w.declareDB(e, 300)
	w.mustLogIn(d)
	w.pg.Stop()
	// The second time with the agent's identity token: the task token is
	// denied once the task ended. Then RFC 7009: the same answer.
	for i, bearer := range []string{d.taskToken, e.identity("agent-7")} {
		r := e.do(http.MethodPost, "/v1/tasks/"+d.id+"/complete", bearer, "", nil, false)
		if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "could not be revoked") {
			t.Fatalf("complete #%d with PostgreSQL down: %d %s", i+1, r.Status, r.Body)
		}
	}
	r := e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+d.taskToken), true)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("RFC 7009 revoke with PostgreSQL down: %d %s", r.Status, r.Body)
	}
	// At each complete: the lease could not be revoked, and the token's
	// revocation could not be confirmed at the database.
	var failed []any
	for _, ev := range e.auditEvents("revocation.failed") {
		failed = append(failed, ev["credentials"].([]any)...)
	}
	if want := []any{d.leaseID, d.accessor, d.leaseID, d.accessor, d.leaseID, d.accessor}; !slices.Equal(failed, want) {
		t.Fatalf("revocation.failed events name %v; want %v", failed, want)
	}
	if st := e.svc.Stats(); st.Failed != 6 || st.Queued != 6 || st.QueueFailed != 0 {
		t.Fatalf("stats = %+v; want the lease and token failed and queued at each attempt", st)
	}
	m := e.scrape()
	if !strings.Contains(m, "valet_revocation_failures_total 6\n") || !strings.Contains(m, "valet_revocations_pending 2\n") {
		t.Fatalf("metrics do not show the failures and the pending revocations:\n%s", grepLines(m, "valet_revocation"))
	}
	w.pg.Restart()
	if ok, _ := w.pg.RoleExists(context.Background(), d.username); !ok {
		t.Fatal("the role is gone before any retry: the test proves nothing")
	}
	// The token's retry is confirmed only once the lease's has dropped the
	// role; the queue may hold them in either order.
	revoked := 0
	for range 3 {
		w.clock.Advance(2 * time.Minute) // past any backoff
		n, err := e.retrier.Once(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		revoked += n
	}
	if revoked != 2 {
		t.Fatalf("retries revoked %d; want the lease and the token", revoked)
	}
	w.mustBeDeadNow(d, nil)
	if r := e.do(http.MethodPost, "/v1/tasks/"+d.id+"/complete", e.identity("agent-7"), "", nil, false); r.Status != http.StatusOK {
		t.Fatalf("complete once dead: %d %s", r.Status, r.Body)
	}
	r = e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+d.taskToken), true)
	if r.Status != http.StatusOK {
		t.Fatalf("RFC 7009 revoke once dead: %d %s", r.Status, r.Body)
	}
}

// TestVaultLostValetToken (issue 17, finding 8): when Vault no longer knows
// Valet's own token, a declaration answers 503 (Valet cannot serve now),
// not 500.
func TestVaultLostValetToken(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	if err := w.vault.Root().Auth().Token().RevokeTree(w.token); err != nil {
		t.Fatal(err)
	}
	r := e.declare(e.identity("agent-7"), `{"template":"db","intent":"look up order 4521","tools":["db.query"]}`)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("declare with Valet's Vault token gone: %d %s", r.Status, r.Body)
	}
}

// TestVaultRevocationLatency measures, for each way a task ends (complete,
// RFC 7009, the deadline), the time from the call that ends it until a new
// login with its database credentials is refused and until a session held
// open is killed, over 20 trials, and prints p50 and max. For the deadline
// it is counted from the reaper's pass (add up to one reaper interval).
// It asserts only what the 2xx promises: both are dead when it returns.
func TestVaultRevocationLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("a measurement (60 declarations on a real Vault and PostgreSQL): run without -short")
	}
	const trials = 20
	w := newVaultWorld(t)
	w.withOrders()
	e := w.broker()
	probe := w.declareDB(e, 60)
	began := time.Now()
	w.mustLogIn(probe)
	t.Logf("one login (connect, scram, SELECT 1, close) takes %v: the resolution of \"login refused\"", time.Since(began).Round(100*time.Microsecond))
	if st := endPaths[0].end(w, e, probe); st != http.StatusOK {
		t.Fatalf("complete: %d", st)
	}
	for _, path := range endPaths {
		var refused, killed, answered []time.Duration
		for range trials {
			d := w.declareDB(e, 60)
			s := w.hostileSession(d)
			start := time.Now()
			loginDone, sessionDone := make(chan time.Duration, 1), make(chan time.Duration, 1)
			go func() {
				// When the first attempt is refused (or cut off): an upper
				// bound, within one attempt's time.
				for {
					if err := w.pg.Login(context.Background(), d.username, d.password); err != nil {
						loginDone <- time.Since(start)
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}()
			go func() {
				for s.fetch() == nil {
					time.Sleep(2 * time.Millisecond)
				}
				sessionDone <- time.Since(start)
			}()
			if st := path.end(w, e, d); st != http.StatusOK {
				t.Fatalf("%s: %d", path.name, st)
			}
			returned := time.Since(start)
			r, k := <-loginDone, <-sessionDone
			if k > returned+10*time.Millisecond {
				t.Errorf("%s: answered after %v, session killed after %v", path.name, returned, k)
			}
			if err := w.pg.Login(context.Background(), d.username, d.password); err == nil {
				t.Errorf("%s: a login begun after the answer works", path.name)
			}
			refused, killed, answered = append(refused, r), append(killed, k), append(answered, returned)
		}
		t.Logf("%-8s new login refused: p50 %v max %v; open session killed: p50 %v max %v; answered: p50 %v max %v (n=%d)", path.name,
			percentile(refused, 50), percentile(refused, 100), percentile(killed, 50), percentile(killed, 100),
			percentile(answered, 50), percentile(answered, 100), trials)
	}
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p+99)/100 - 1
	return s[max(i, 0)].Round(100 * time.Microsecond)
}

// TestVaultLostLeaseConfirmedAtDatabase (issue 17, finding 5): Vault forgot
// the lease (as a dev server restart or a forced revocation does) while the
// role lives on in PostgreSQL. Valet does not take Vault's word: complete
// answers 503 and the revocation is retried until the database shows the
// login dead.
func TestVaultLostLeaseConfirmedAtDatabase(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	d := w.declareDB(e, 300)
	w.pg.Stop()
	if _, err := w.vault.Root().Logical().Write("sys/leases/revoke-force/"+d.leaseID, nil); err != nil {
		t.Fatal(err)
	}
	w.pg.Restart()
	if ok, err := w.vault.LeaseExists(d.leaseID); ok || err != nil {
		t.Fatalf("Vault still holds the lease: %v %v", ok, err)
	}
	w.mustLogIn(d)
	r := e.do(http.MethodPost, "/v1/tasks/"+d.id+"/complete", d.taskToken, "", nil, false)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("complete with the login alive at the database: %d %s", r.Status, r.Body)
	}
	w.clock.Advance(2 * time.Minute)
	if n, _ := e.retrier.Once(context.Background()); n != 0 {
		t.Fatalf("a retry counted %d revoked while the login lives", n)
	}
	// Ops drop the role by hand; the next retry confirms it.
	if err := w.pg.Exec(context.Background(), `DROP OWNED BY "`+d.username+`"; DROP ROLE "`+d.username+`"`); err != nil {
		t.Fatal(err)
	}
	w.clock.Advance(2 * time.Minute)
	if n, err := e.retrier.Once(context.Background()); err != nil || n != 1 {
		t.Fatalf("retrier.Once = %d, %v", n, err)
	}
	if r := e.do(http.MethodPost, "/v1/tasks/"+d.id+"/complete", e.identity("agent-7"), "", nil, false); r.Status != http.StatusOK {
		t.Fatalf("complete once dead: %d %s", r.Status, r.Body)
	}
}

// TestVaultExtraLoginsDieBeforeAnswer (issue 17, finding 6): logins the
// agent reads with its own task token, which the ledger never saw, are
// dead at the database before complete answers 200.
func TestVaultExtraLoginsDieBeforeAnswer(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	d := w.declareDB(e, 300)
	var extras []dbTask
	for range 3 {
		sec, err := w.vault.Client(d.vaultTok).Logical().Read("database/creds/" + vaulttest.DBRole)
		if err != nil {
			t.Fatal(err)
		}
		x := d
		x.leaseID, x.username, x.password = sec.LeaseID, sec.Data["username"].(string), sec.Data["password"].(string)
		w.mustLogIn(x)
		extras = append(extras, x)
	}
	if r := e.do(http.MethodPost, "/v1/tasks/"+d.id+"/complete", d.taskToken, "", nil, false); r.Status != http.StatusOK {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	for _, x := range append(extras, d) {
		if ok, err := w.pg.RoleExists(context.Background(), x.username); ok || err != nil {
			t.Errorf("login %s still exists after the 2xx (%v)", x.username, err)
		}
	}
}

// grepLines keeps the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
