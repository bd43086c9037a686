package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/pgtest"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/internal/vaulttest"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/revocation"
)

// vaultTemplates are testTemplates plus a template whose tasks get a
// Vault token and PostgreSQL credentials.
const vaultTemplates = testTemplates + `
  - name: db
    principals: [{issuer: test}]
    ttl: {default: 5m, max: 15m}
    tools: [db.query]
    audiences: [https://tools.example.com]
    vault:
      token_role: valet-task
      policies: [valet-db]
      database_role: readonly
`

// vaultWorld is Redis, an IdP, PostgreSQL and Vault, shared by the brokers
// of one test (a restarted broker is a new env on the same world).
type vaultWorld struct {
	t     *testing.T
	redis *redistest.Server
	idp   *oidctest.Issuer
	pg    *pgtest.Server
	vault *vaulttest.Server
	clock *testkit.Clock
	token string // Valet's own Vault token, with the documented policy
	// logins checks the database as a role that can do nothing else.
	logins *issuers.PostgresLogins
}

func newVaultWorld(t *testing.T) *vaultWorld {
	w := &vaultWorld{t: t, redis: redistest.Start(t, redistest.WithAOF()), idp: oidctest.New(t), pg: pgtest.Start(t),
		clock: testkit.NewClock(time.Now())}
	w.vault = vaulttest.Start(t, vaulttest.Options{Postgres: w.pg})
	w.token = w.vault.ValetToken(time.Hour)
	if err := w.pg.Exec(context.Background(), "CREATE ROLE valet_check LOGIN PASSWORD 'check-only'"); err != nil {
		t.Fatal(err)
	}
	var err error
	if w.logins, err = issuers.NewPostgresLogins(w.pg.URL("valet_check", "check-only")); err != nil {
		t.Fatal(err)
	}
	// Starting Vault and PostgreSQL takes seconds: start the broker's clock
	// at the real time now, as Vault's is, so expiries compare.
	w.clock = testkit.NewClock(time.Now())
	return w
}

// broker starts a broker on the world: a Vault issuer logged in with
// Valet's token and the Redis retry queue; opts adjust the env further.
func (w *vaultWorld) broker(opts ...func(*envOptions)) *env {
	t := w.t
	sess, err := issuers.NewVaultSession(context.Background(), issuers.VaultClientConfig{
		Address: w.vault.Addr(), Timeout: time.Second,
		Login: issuers.VaultLogin{Method: issuers.VaultAuthToken, Token: w.token},
	})
	if err != nil {
		t.Fatal(err)
	}
	v, err := issuers.NewVault(issuers.VaultConfig{Client: sess.Client(), Timeout: time.Second, Now: w.clock.Now,
		DatabaseLogins: w.logins})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := revocation.NewClient(w.redis.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	q, err := revocation.NewRedisQueue(rc, revocation.RedisOptions{Prefix: "valet"})
	if err != nil {
		t.Fatal(err)
	}
	o := envOptions{redis: w.redis, idp: w.idp, clock: w.clock, issuers: []broker.Issuer{v}, queue: q, templates: vaultTemplates}
	for _, opt := range opts {
		opt(&o)
	}
	e := newEnv(t, o)
	w.syncClock()
	return e
}

// syncClock moves the broker's clock forward to the real time when it fell
// behind (a loaded machine takes seconds to start a broker): Vault counts
// expiries on the real clock, and a lagging broker clock would read as a
// token outliving its task by the lag. It never moves the clock back, so a
// test's Advance holds.
func (w *vaultWorld) syncClock() {
	if now := time.Now(); w.clock.Now().Before(now) {
		w.clock.Set(now)
	}
}

// dbTask is what a declaration of the db template hands back.
type dbTask struct {
	id, taskToken       string
	accessor, vaultTok  string
	leaseID             string
	username, password  string
	deadline, createdAt time.Time
}

func (w *vaultWorld) declareDB(e *env, ttl int) dbTask {
	w.syncClock()
	w.t.Helper()
	r := e.declare(e.identity("agent-7"), `{"template":"db","intent":"look up order 4521","tools":["db.query"],"ttl_seconds":`+itoa(ttl)+`}`)
	if r.Status != http.StatusCreated {
		w.t.Fatalf("declare db: %d %s", r.Status, r.Body)
	}
	var body struct {
		Task        broker.Task      `json:"task"`
		Credentials []map[string]any `json:"credentials"`
	}
	if err := json.Unmarshal(r.Body, &body); err != nil {
		w.t.Fatal(err)
	}
	d := dbTask{id: body.Task.ID, deadline: body.Task.Deadline, createdAt: body.Task.CreatedAt}
	kinds := []string{}
	for _, c := range body.Credentials {
		kinds = append(kinds, c["kind"].(string))
		switch c["kind"] {
		case "jwt":
			d.taskToken = c["access_token"].(string)
		case "vault_token":
			d.accessor, d.vaultTok = c["accessor"].(string), c["token"].(string)
			if c["id"] != d.accessor || c["type"] != "vault_token" {
				w.t.Fatalf("vault token credential: %v", c["id"])
			}
		case "vault_lease":
			d.leaseID, d.username, d.password = c["lease_id"].(string), c["username"].(string), c["password"].(string)
			if c["id"] != d.leaseID || c["type"] != "database" {
				w.t.Fatalf("lease credential: %v", c["id"])
			}
		}
	}
	if strings.Join(kinds, ",") != "jwt,vault_token,vault_lease" {
		w.t.Fatalf("credential kinds = %v", kinds)
	}
	return d
}

// mustLogIn / mustBeRefused log in to PostgreSQL with the task's creds.
func (w *vaultWorld) mustLogIn(d dbTask) {
	w.t.Helper()
	if err := w.pg.Login(context.Background(), d.username, d.password); err != nil {
		w.t.Fatalf("PostgreSQL login with the task's credentials: %v", err)
	}
}

// mustBeGone waits (bounded: Vault revokes leases in the background) until
// the role is dropped, then checks the login is refused and the token and
// lease are gone from Vault.
func (w *vaultWorld) mustBeGone(d dbTask) {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := w.pg.RoleExists(context.Background(), d.username)
		if err == nil && !ok {
			break
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("role %s still in pg_roles 10s after revocation (err %v)", d.username, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := w.pg.Login(context.Background(), d.username, d.password); err == nil {
		w.t.Fatal("PostgreSQL login still works after the task ended")
	}
	if _, err := w.vault.LookupAccessor(d.accessor); !vaulttest.IsGone(err) {
		w.t.Fatalf("task token still in Vault: %v", err)
	}
	if ok, err := w.vault.LeaseExists(d.leaseID); ok || err != nil {
		w.t.Fatalf("lease still in Vault: %v %v", ok, err)
	}
}

// TestVaultComplete: declare, log in to PostgreSQL, complete, refused.
func TestVaultComplete(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	d := w.declareDB(e, 300)
	w.mustLogIn(d)

	// The token can never outlive the task, checked in Vault.
	info, err := w.vault.LookupAccessor(d.accessor)
	if err != nil {
		t.Fatal(err)
	}
	maxTTL, _ := info.Data["explicit_max_ttl"].(json.Number).Int64()
	remaining := d.deadline.Sub(w.clock.Now())
	if time.Duration(maxTTL)*time.Second > remaining || maxTTL < 299 {
		t.Fatalf("explicit_max_ttl %ds; task has %v left", maxTTL, remaining)
	}
	expire, err := time.Parse(time.RFC3339Nano, info.Data["expire_time"].(string))
	if err != nil || expire.After(d.deadline.Add(2*time.Second)) { // the two clocks read a moment apart
		t.Fatalf("token expires at %v, task deadline %v (%v)", expire, d.deadline, err)
	}
	if meta := info.Data["meta"].(map[string]any); meta["valet_task_id"] != d.id {
		t.Fatalf("meta = %v", meta)
	}

	r := e.do(http.MethodPost, "/v1/tasks/"+d.id+"/complete", d.taskToken, "", nil, false)
	if r.Status != http.StatusOK {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	w.mustBeGone(d)
	if s := e.svc.Stats(); s.Revoked != 2 || s.Failed != 0 { // the lease, then the token
		t.Fatalf("stats = %+v", s)
	}
	for _, secret := range []string{d.vaultTok, d.password} {
		if strings.Contains(e.audit.String(), secret) {
			t.Fatal("the audit trail holds a Vault secret")
		}
	}
	if !strings.Contains(e.audit.String(), d.accessor) || !strings.Contains(e.audit.String(), d.leaseID) {
		t.Fatal("the audit trail does not name the accessor and lease id")
	}
}

// TestVaultReaper: the deadline passes, the reaper ends the task, the role
// is dropped.
func TestVaultReaper(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	d := w.declareDB(e, 60)
	w.mustLogIn(d)
	w.clock.Advance(61 * time.Second)
	n, err := e.reaper.Once(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("reaper.Once = %d, %v", n, err)
	}
	w.mustBeGone(d)
}

// TestVaultRevokeRFC7009: POST /v1/revoke of the task token kills the
// Vault credentials too.
func TestVaultRevokeRFC7009(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	d := w.declareDB(e, 300)
	w.mustLogIn(d)
	r := e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+d.taskToken), true)
	if r.Status != http.StatusOK {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	w.mustBeGone(d)
}

// TestVaultOutage: with Vault cut off, declarations answer 503 within the
// timeout and leave nothing behind; a completion answers 503 and queues the
// revocation in Redis; a restarted broker finishes it once Vault is back.
func TestVaultOutage(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	d := w.declareDB(e, 300)
	w.mustLogIn(d)
	writes := e.ledger.writes.Load()

	for name, cut := range map[string]func(){"refused": w.vault.Stop, "hanging": w.vault.Hang} {
		cut()
		start := time.Now()
		r := e.declare(e.identity("agent-7"), `{"template":"db","intent":"look up order 4522","tools":["db.query"]}`)
		took := time.Since(start)
		if r.Status != http.StatusServiceUnavailable {
			t.Fatalf("declare with Vault %s: %d %s", name, r.Status, r.Body)
		}
		if took > 2*time.Second {
			t.Fatalf("declare with Vault %s took %v; want a 503 within 2s", name, took)
		}
		t.Logf("Vault %s: 503 in %v", name, took.Round(time.Millisecond))
	}
	// Plain task tokens do not need Vault.
	if _, tt := e.declared("agent-7", 60); tt == "" {
		t.Fatal("no task token")
	}
	if got := e.ledger.writes.Load(); got != writes+1 {
		t.Fatalf("ledger writes went from %d to %d: a failed declaration reached the ledger", writes, got)
	}

	// Completing while Vault is down: the task ends, its JWT is denied, the
	// Vault revocation is queued and the answer says so.
	w.vault.Stop()
	r := e.do(http.MethodPost, "/v1/tasks/"+d.id+"/complete", d.taskToken, "", nil, false)
	if r.Status != http.StatusServiceUnavailable || !strings.Contains(string(r.Body), "retried") {
		t.Fatalf("complete with Vault down: %d %s", r.Status, r.Body)
	}
	if in := e.introspect(d.taskToken); in["active"] != false {
		t.Fatal("the task token is still active")
	}
	if s := e.svc.Stats(); s.Failed != 2 || s.Queued != 2 { // the lease and the token
		t.Fatalf("stats = %+v", s)
	}
	if n, err := e.retrier.Once(context.Background()); err != nil || n != 0 {
		t.Fatalf("retrier.Once before the backoff: %d %v", n, err)
	}
	w.vault.Start()
	// Nothing half-issued: the only Valet token in Vault is the one whose
	// revocation is pending.
	live := liveTaskTokens(t, w.vault.Root())
	if len(live) != 1 || live[0] != d.accessor {
		t.Fatalf("Valet tokens in Vault: %v; want only %s", live, d.accessor)
	}
	w.mustLogIn(d) // still alive: the revocation is pending

	// A new broker (the old one restarted) on the same Redis finishes it.
	w.clock.Advance(2 * time.Minute) // past any backoff
	e2 := w.broker()
	n, err := e2.retrier.Once(context.Background())
	if err != nil || n != 2 { // the lease and the token
		t.Fatalf("retrier.Once after restart = %d, %v", n, err)
	}
	w.mustBeGone(d)
	if s := e2.retrier.Stats(); s.Retried != 2 {
		t.Fatalf("stats = %+v", s)
	}
}

// TestVaultReconciler: a token made through the role for a task the ledger
// never recorded (the broker died between the two) is revoked by the
// reconciler; a live task's token is left alone.
func TestVaultReconciler(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	d := w.declareDB(e, 600)
	orphan, err := w.vault.Root().Auth().Token().CreateWithRole(&api.TokenCreateRequest{
		Policies: []string{vaulttest.TaskPolicy}, ExplicitMaxTTL: "600s", TTL: "600s",
		Metadata: map[string]string{issuers.MetaTaskID: "tsk_never_recorded", issuers.MetaAgent: "agent-7"},
	}, vaulttest.TokenRole)
	if err != nil {
		t.Fatal(err)
	}
	// Young tokens are spared: their declaration may still be running.
	if n, err := e.reconciler.Once(context.Background()); err != nil || n != 0 {
		t.Fatalf("reconciler.Once within the grace = %d, %v", n, err)
	}
	w.clock.Advance(2 * time.Minute)
	// A broker restarted after the crash runs the reconciler.
	e2 := w.broker()
	n, err := e2.reconciler.Once(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("reconciler.Once = %d, %v", n, err)
	}
	if _, err := w.vault.LookupAccessor(orphan.Auth.Accessor); !vaulttest.IsGone(err) {
		t.Fatalf("orphan token still in Vault: %v", err)
	}
	if _, err := w.vault.LookupAccessor(d.accessor); err != nil {
		t.Fatalf("the live task's token was revoked: %v", err)
	}
	w.mustLogIn(d)
	if s := e2.reconciler.Stats(); s.Reconciled != 1 {
		t.Fatalf("stats = %+v", s)
	}
}

// liveTaskTokens lists the accessors of tokens with a Valet task id.
func liveTaskTokens(t *testing.T, root *api.Client) []string {
	t.Helper()
	sec, err := root.Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range sec.Data["keys"].([]any) {
		info, err := root.Auth().Token().LookupAccessor(k.(string))
		if err != nil {
			continue
		}
		if meta, _ := info.Data["meta"].(map[string]any); meta[issuers.MetaTaskID] != nil {
			out = append(out, k.(string))
		}
	}
	return out
}
