package issuers_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/internal/vaulttest"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
)

// mintWith checks a session can do Valet's work: mint a task token and
// revoke it.
func mintWith(t *testing.T, sess *issuers.VaultSession) {
	t.Helper()
	v, err := issuers.NewVault(issuers.VaultConfig{Client: sess.Client(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	spec := policy.VaultSpec{TokenRole: vaulttest.TokenRole, Policies: []string{vaulttest.TaskPolicy}}
	m, err := v.Mint(context.Background(), vaultTask(time.Now(), time.Minute), broker.Principal{}, vaultGrant(spec))
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	if err := v.Revoke(context.Background(), m[0].Credential); err != nil {
		t.Fatalf("revoke: %v", err)
	}
}

func TestVaultLoginAppRoleRenewsAndLogsInAgain(t *testing.T) {
	vs := vaulttest.Start(t, vaulttest.Options{})
	root := vs.Root()
	if err := root.Sys().EnableAuthWithOptions("approle", &api.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().Write("auth/approle/role/valet", map[string]any{
		"token_policies": []string{vaulttest.ValetPolicy}, "token_ttl": "2s", "token_max_ttl": "4s",
	}); err != nil {
		t.Fatal(err)
	}
	rid, err := root.Logical().Read("auth/approle/role/valet/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := root.Logical().Write("auth/approle/role/valet/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	login := issuers.VaultLogin{Method: issuers.VaultAuthAppRole, RoleID: rid.Data["role_id"].(string), SecretID: sid.Data["secret_id"].(string)}
	sess, err := issuers.NewVaultSession(context.Background(), issuers.VaultClientConfig{Address: vs.Addr(), Login: login})
	if err != nil {
		t.Fatal(err)
	}
	mintWith(t, sess)
	first := sess.Client().Token()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sess.Run(ctx)
	// The token's max TTL is 4s: Run must have logged in again by ~5s.
	testkit.EventuallyWithin(t, 15*time.Second, func() bool { return sess.Client().Token() != first },
		"Valet to log in again when its token reaches its max TTL")
	// The new token does Valet's work.
	mintWith(t, sess)
	if err := sess.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
}

func TestVaultLoginJWT(t *testing.T) {
	vs := vaulttest.Start(t, vaulttest.Options{})
	idp := oidctest.New(t)
	root := vs.Root()
	if err := root.Sys().EnableAuthWithOptions("jwt", &api.EnableAuthOptions{Type: "jwt"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().Write("auth/jwt/config", map[string]any{
		"jwks_url": idp.URL() + "/jwks", "bound_issuer": idp.URL(), "jwt_supported_algs": []string{"RS256"},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().Write("auth/jwt/role/valet", map[string]any{
		"role_type": "jwt", "user_claim": "sub", "bound_audiences": []string{"vault"},
		"bound_subject": "system:serviceaccount:valet:valet", "token_policies": []string{vaulttest.ValetPolicy}, "token_period": "1h",
	}); err != nil {
		t.Fatal(err)
	}
	jwtFile := filepath.Join(t.TempDir(), "token")
	write := func(sub string) {
		tok := idp.Token(t, map[string]any{"sub": sub, "aud": "vault"}, oidctest.WithAlg("RS256"))
		if err := os.WriteFile(jwtFile, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("system:serviceaccount:valet:valet")
	login := issuers.VaultLogin{Method: issuers.VaultAuthJWT, Role: "valet", JWTFile: jwtFile}
	sess, err := issuers.NewVaultSession(context.Background(), issuers.VaultClientConfig{Address: vs.Addr(), Login: login})
	if err != nil {
		t.Fatal(err)
	}
	mintWith(t, sess)

	// Another workload's JWT is refused, and the error is not a 503.
	write("system:serviceaccount:other:other")
	_, err = issuers.NewVaultSession(context.Background(), issuers.VaultClientConfig{Address: vs.Addr(), Login: login})
	if err == nil || errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("login with another subject: %v", err)
	}
}

func TestVaultLoginFailures(t *testing.T) {
	vs := vaulttest.Start(t, vaulttest.Options{})
	cases := map[string]issuers.VaultClientConfig{
		"bad token":      {Address: vs.Addr(), Login: issuers.VaultLogin{Method: issuers.VaultAuthToken, Token: "hvs.not-a-token"}},
		"no method":      {Address: vs.Addr(), Login: issuers.VaultLogin{}},
		"approle no sid": {Address: vs.Addr(), Login: issuers.VaultLogin{Method: issuers.VaultAuthAppRole, RoleID: "x"}},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := issuers.NewVaultSession(context.Background(), cfg); err == nil || errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("NewVaultSession: %v", err)
			}
		})
	}
	vs.Stop()
	start := time.Now()
	_, err := issuers.NewVaultSession(context.Background(), issuers.VaultClientConfig{Address: vs.Addr(), Timeout: time.Second,
		Login: issuers.VaultLogin{Method: issuers.VaultAuthToken, Token: "x"}})
	if !errors.Is(err, broker.ErrUnavailable) || time.Since(start) > 3*time.Second {
		t.Fatalf("login with vault down: %v after %v", err, time.Since(start))
	}
}
