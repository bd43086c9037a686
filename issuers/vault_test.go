package issuers_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/pgtest"
	"github.com/valet-dev/valet/internal/vaulttest"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
)

// vaultEnv is a real Vault (and, when asked, PostgreSQL) and a Vault issuer
// logged in with the policy docs/vault.md gives Valet.
type vaultEnv struct {
	vault  *vaulttest.Server
	pg     *pgtest.Server
	issuer *issuers.Vault
	now    time.Time
}

func newVaultEnv(t *testing.T, withPG bool) *vaultEnv {
	t.Helper()
	e := &vaultEnv{now: time.Now()}
	var o vaulttest.Options
	if withPG {
		e.pg = pgtest.Start(t)
		o.Postgres = e.pg
	}
	e.vault = vaulttest.Start(t, o)
	sess, err := issuers.NewVaultSession(context.Background(), issuers.VaultClientConfig{
		Address: e.vault.Addr(), Timeout: time.Second,
		Login: issuers.VaultLogin{Method: issuers.VaultAuthToken, Token: e.vault.ValetToken(time.Hour)},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.issuer, err = issuers.NewVault(issuers.VaultConfig{Client: sess.Client(), Timeout: time.Second, Now: func() time.Time { return e.now }})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func vaultGrant(spec policy.VaultSpec) broker.Grant {
	return broker.Grant{Template: &policy.Template{Name: "db", Vault: &spec}, TTL: 5 * time.Minute}
}

func vaultTask(now time.Time, ttl time.Duration) broker.Task {
	return broker.Task{ID: "tsk_" + strings.ReplaceAll(now.Format("150405.000000000"), ".", ""), State: broker.StateActive,
		Agent: "agent-7", Issuer: "test", Template: "db", CreatedAt: now, Deadline: now.Add(ttl)}
}

var dbSpec = policy.VaultSpec{TokenRole: vaulttest.TokenRole, Policies: []string{vaulttest.TaskPolicy}, DatabaseRole: vaulttest.DBRole}

func lookup(t *testing.T, v *vaulttest.Server, accessor string) *api.Secret {
	t.Helper()
	sec, err := v.LookupAccessor(accessor)
	if err != nil {
		t.Fatalf("lookup-accessor %s: %v", accessor, err)
	}
	return sec
}

func num(t *testing.T, v any) int64 {
	t.Helper()
	n, err := v.(json.Number).Int64()
	if err != nil {
		t.Fatalf("%v is not a number", v)
	}
	return n
}

// waitRoleGone polls (bounded) until Vault's background revocation has
// dropped the PostgreSQL role.
func waitRoleGone(t *testing.T, pg *pgtest.Server, role string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := pg.RoleExists(context.Background(), role)
		if err == nil && !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("role %s still exists 10s after revocation (err %v)", role, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestVaultMintDatabaseAndRevoke(t *testing.T) {
	e := newVaultEnv(t, true)
	ctx := context.Background()
	task := vaultTask(e.now, 5*time.Minute)
	minted, err := e.issuer.Mint(ctx, task, broker.Principal{}, vaultGrant(dbSpec))
	if err != nil {
		t.Fatal(err)
	}
	if len(minted) != 2 {
		t.Fatalf("minted %d credentials, want a token and a lease", len(minted))
	}
	tok, lease := minted[0], minted[1]
	if tok.Kind != broker.KindVaultToken || tok.Material["type"] != "vault_token" || tok.Material["accessor"] != tok.ID ||
		tok.Material["token"] == "" || tok.TaskID != task.ID || tok.ExpiresAt.After(task.Deadline) {
		t.Fatalf("token credential = %+v", tok.Credential)
	}
	if lease.Kind != broker.KindVaultLease || lease.Parent != tok.ID || lease.Material["lease_id"] != lease.ID ||
		!strings.HasPrefix(lease.ID, "database/creds/"+vaulttest.DBRole+"/") || lease.ExpiresAt.After(tok.ExpiresAt) {
		t.Fatalf("lease credential = %+v", lease.Credential)
	}
	user, pass := lease.Material["username"].(string), lease.Material["password"].(string)
	if err := e.pg.Login(ctx, user, pass); err != nil {
		t.Fatalf("login with the issued database credentials: %v", err)
	}
	if err := e.pg.Login(ctx, user, pass+"x"); err == nil {
		t.Fatal("login with a wrong password worked: the test proves nothing")
	}

	info := lookup(t, e.vault, tok.ID)
	if got := num(t, info.Data["explicit_max_ttl"]); got > 300 || got < 299 {
		t.Fatalf("explicit_max_ttl = %d, want the task's remaining 300s", got)
	}
	meta := info.Data["meta"].(map[string]any)
	if meta[issuers.MetaTaskID] != task.ID || meta[issuers.MetaAgent] != "agent-7" || meta[issuers.MetaTemplate] != "db" || meta[issuers.MetaIssuer] != "test" {
		t.Fatalf("meta = %v", meta)
	}
	if info.Data["renewable"] != false || info.Data["role"] != vaulttest.TokenRole || info.Data["orphan"] != false {
		t.Fatalf("token = %v", info.Data)
	}
	if ok, err := e.vault.LeaseExists(lease.ID); err != nil || !ok {
		t.Fatalf("lease lookup: %v %v", ok, err)
	}

	if err := e.issuer.Revoke(ctx, tok.Credential); err != nil {
		t.Fatal(err)
	}
	if _, err := e.vault.LookupAccessor(tok.ID); !vaulttest.IsGone(err) {
		t.Fatalf("token after revoke: %v", err)
	}
	waitRoleGone(t, e.pg, user)
	if err := e.pg.Login(ctx, user, pass); err == nil {
		t.Fatal("database login still works after the task token was revoked")
	}
	if ok, _ := e.vault.LeaseExists(lease.ID); ok {
		t.Fatal("lease outlived its token")
	}
	// Revoking what is gone is fine.
	if err := e.issuer.Revoke(ctx, tok.Credential); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
}

// TestVaultExplicitMaxTTLNeverExceedsTask: whatever the remaining time, the
// token's explicit_max_ttl is at most the whole seconds left.
func TestVaultExplicitMaxTTLNeverExceedsTask(t *testing.T) {
	e := newVaultEnv(t, false)
	spec := policy.VaultSpec{TokenRole: vaulttest.TokenRole, Policies: []string{vaulttest.TaskPolicy}, NumUses: 7}
	for _, left := range []time.Duration{1500 * time.Millisecond, 90*time.Second + 999*time.Millisecond, 15 * time.Minute, 24 * time.Hour} {
		task := vaultTask(e.now, left)
		m, err := e.issuer.Mint(context.Background(), task, broker.Principal{}, vaultGrant(spec))
		if err != nil {
			t.Fatalf("%v left: %v", left, err)
		}
		info := lookup(t, e.vault, m[0].ID)
		got := time.Duration(num(t, info.Data["explicit_max_ttl"])) * time.Second
		if got > left || got < left-time.Second {
			t.Errorf("%v left: explicit_max_ttl %v", left, got)
		}
		if ttl := time.Duration(num(t, info.Data["ttl"])) * time.Second; ttl > left {
			t.Errorf("%v left: ttl %v", left, ttl)
		}
		if n := num(t, info.Data["num_uses"]); n != 7 {
			t.Errorf("num_uses = %d", n)
		}
		if m[0].ExpiresAt.After(task.Deadline) {
			t.Errorf("%v left: recorded expiry %v after the deadline %v", left, m[0].ExpiresAt, task.Deadline)
		}
	}
	if _, err := e.issuer.Mint(context.Background(), vaultTask(e.now, 500*time.Millisecond), broker.Principal{}, vaultGrant(spec)); err == nil {
		t.Fatal("minted for a task with half a second left")
	}
}

// TestVaultPolicyNotAllowed: Vault itself refuses a policy outside the
// role's allowed_policies; no token is left and the error is not a 503.
func TestVaultPolicyNotAllowed(t *testing.T) {
	e := newVaultEnv(t, false)
	spec := policy.VaultSpec{TokenRole: vaulttest.TokenRole, Policies: []string{vaulttest.TaskPolicy, vaulttest.OtherPolicy}}
	_, err := e.issuer.Mint(context.Background(), vaultTask(e.now, time.Minute), broker.Principal{}, vaultGrant(spec))
	if err == nil || errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("mint with a policy the role does not allow: %v", err)
	}
	live, err := e.issuer.Live(context.Background())
	if err != nil || len(live) != 0 {
		t.Fatalf("Live = %v, %v", live, err)
	}
}

// TestVaultHalfMintedIsRevoked: the database read fails after the token
// was made; the token is revoked before Mint returns.
func TestVaultHalfMintedIsRevoked(t *testing.T) {
	e := newVaultEnv(t, true)
	spec := dbSpec
	spec.DatabaseRole = "no-such-role"
	_, err := e.issuer.Mint(context.Background(), vaultTask(e.now, time.Minute), broker.Principal{}, vaultGrant(spec))
	if err == nil {
		t.Fatal("mint with a missing database role succeeded")
	}
	var nr *broker.NotRevokedError
	if errors.As(err, &nr) {
		t.Fatalf("the half-minted token was not revoked: %v", err)
	}
	live, lerr := e.issuer.Live(context.Background())
	if lerr != nil || len(live) != 0 {
		t.Fatalf("tokens left after a failed mint: %v, %v", live, lerr)
	}
}

// TestVaultWrapped: with wrap_ttl the client gets single-use wrapping
// tokens that unwrap to the real secrets.
func TestVaultWrapped(t *testing.T) {
	e := newVaultEnv(t, true)
	spec := dbSpec
	spec.WrapTTL = 2 * time.Minute
	m, err := e.issuer.Mint(context.Background(), vaultTask(e.now, 5*time.Minute), broker.Principal{}, vaultGrant(spec))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range m {
		if c.Material["wrapped"] != true || c.Material["token"] != nil || c.Material["password"] != nil {
			t.Fatalf("material not wrapped: keys %v", keys(c.Material))
		}
		if ttl := c.Material["wrap_ttl_seconds"].(int); ttl != 120 {
			t.Fatalf("wrap ttl = %d", ttl)
		}
	}
	unwrap := func(tok string) (*api.Secret, error) {
		c, err := e.vault.Root().Clone()
		if err != nil {
			t.Fatal(err)
		}
		c.SetToken(tok)
		return c.Logical().Unwrap("")
	}
	sec, err := unwrap(m[1].Material["wrapping_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.pg.Login(context.Background(), sec.Data["username"].(string), sec.Data["password"].(string)); err != nil {
		t.Fatalf("login with unwrapped credentials: %v", err)
	}
	if _, err := unwrap(m[1].Material["wrapping_token"].(string)); err == nil {
		t.Fatal("a wrapping token unwrapped twice")
	}
	sec, err = unwrap(m[0].Material["wrapping_token"].(string))
	if err != nil || sec.Data["accessor"] != m[0].ID {
		t.Fatalf("unwrapped token: %v %v", sec, err)
	}
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestVaultDown: with Vault refusing or hanging, Mint and Revoke fail with
// ErrUnavailable within the timeout.
func TestVaultDown(t *testing.T) {
	e := newVaultEnv(t, false)
	spec := policy.VaultSpec{TokenRole: vaulttest.TokenRole, Policies: []string{vaulttest.TaskPolicy}}
	m, err := e.issuer.Mint(context.Background(), vaultTask(e.now, time.Minute), broker.Principal{}, vaultGrant(spec))
	if err != nil {
		t.Fatal(err)
	}
	for name, cut := range map[string]func(){"refused": e.vault.Stop, "hanging": e.vault.Hang} {
		t.Run(name, func(t *testing.T) {
			cut()
			defer e.vault.Start()
			start := time.Now()
			_, err := e.issuer.Mint(context.Background(), vaultTask(e.now, time.Minute), broker.Principal{}, vaultGrant(spec))
			if !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("mint with vault %s: %v", name, err)
			}
			if err := e.issuer.Revoke(context.Background(), m[0].Credential); !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("revoke with vault %s: %v", name, err)
			}
			if took := time.Since(start); took > 3*time.Second {
				t.Fatalf("two calls with vault %s took %v; the timeout is 1s each", name, took)
			}
		})
	}
	if err := e.issuer.Revoke(context.Background(), m[0].Credential); err != nil {
		t.Fatalf("revoke once vault is back: %v", err)
	}
}

// TestVaultLive lists Valet's tokens and only those.
func TestVaultLive(t *testing.T) {
	e := newVaultEnv(t, false)
	spec := policy.VaultSpec{TokenRole: vaulttest.TokenRole, Policies: []string{vaulttest.TaskPolicy}}
	task := vaultTask(e.now, time.Minute)
	m, err := e.issuer.Mint(context.Background(), task, broker.Principal{}, vaultGrant(spec))
	if err != nil {
		t.Fatal(err)
	}
	live, err := e.issuer.Live(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != 1 || live[0].ID != m[0].ID || live[0].TaskID != task.ID || live[0].IssuedAt.IsZero() ||
		live[0].ExpiresAt.Sub(task.Deadline) > 2*time.Second {
		t.Fatalf("Live = %+v", live)
	}
}
