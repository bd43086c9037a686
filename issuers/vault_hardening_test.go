package issuers_test

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/hashicorp/vault/api"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/vaulttest"
	"github.com/valet-dev/valet/policy"
)

// taskTokensOf lists, as root, the accessors of live tokens whose metadata
// names task id.
func taskTokensOf(t *testing.T, v *vaulttest.Server, id string) []string {
	t.Helper()
	sec, err := v.Root().Logical().List("auth/token/accessors")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	keys, _ := sec.Data["keys"].([]any)
	for _, k := range keys {
		info, err := v.LookupAccessor(k.(string))
		if err != nil {
			continue
		}
		if meta, _ := info.Data["meta"].(map[string]any); meta["valet_task_id"] == id {
			out = append(out, k.(string))
		}
	}
	return out
}

// TestVaultRevokeRefusesForeignToken (issue 17, finding 4): Valet's policy
// can revoke any accessor (Vault cannot narrow revoke-accessor), so the
// issuer revokes only a token that is a task token of the credential's own
// task: another team's token, or another task's, stays live.
func TestVaultRevokeRefusesForeignToken(t *testing.T) {
	e := newVaultEnv(t, false)
	ctx := context.Background()
	foreign, err := e.vault.Root().Auth().Token().Create(&api.TokenCreateRequest{Policies: []string{vaulttest.OtherPolicy}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	spec := policy.VaultSpec{TokenRole: vaulttest.TokenRole, Policies: []string{vaulttest.TaskPolicy}}
	task := vaultTask(e.now, 5*time.Minute)
	m, err := e.issuer.Mint(ctx, task, broker.Principal{}, vaultGrant(spec))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, accessor, taskID string }{
		{"another team's token", foreign.Auth.Accessor, task.ID},
		{"another task's token", m[0].ID, "tsk_someoneelse"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := e.issuer.Revoke(ctx, broker.Credential{ID: tc.accessor, Kind: broker.KindVaultToken, TaskID: tc.taskID})
			if err == nil {
				t.Fatal("revoked a token that is not a task token of the credential's task")
			}
			if _, err := e.vault.LookupAccessor(tc.accessor); err != nil {
				t.Fatalf("the token is gone: %v", err)
			}
		})
	}
	if err := e.issuer.Revoke(ctx, m[0].Credential); err != nil {
		t.Fatal(err)
	}
	if _, err := e.vault.LookupAccessor(m[0].ID); !vaulttest.IsGone(err) {
		t.Fatalf("own task token not revoked: %v", err)
	}
}

// TestVaultValetPolicyLeaseRevocation (issue 17, finding 4): the policy in
// deploy/vault/valet-policy.hcl lets Valet revoke database leases only by
// a path under database/creds/, never a lease named in the body.
func TestVaultValetPolicyLeaseRevocation(t *testing.T) {
	e := newVaultEnv(t, true)
	lease, err := e.vault.Root().Logical().Read("database/creds/" + vaulttest.DBRole)
	if err != nil {
		t.Fatal(err)
	}
	valet := e.vault.Client(e.vault.ValetToken(time.Hour))
	for _, tc := range []struct {
		name, path string
		body       map[string]any
	}{
		{"lease id in the body", "sys/leases/revoke", map[string]any{"lease_id": lease.LeaseID}},
		{"body lease id on an allowed path", "sys/leases/revoke/database/creds/" + vaulttest.DBRole + "/none", map[string]any{"lease_id": lease.LeaseID}},
		{"revoke by prefix", "sys/leases/revoke-prefix/database/creds", nil},
		{"revoke by force", "sys/leases/revoke-force/database/creds", nil},
		{"renew a lease", "sys/leases/renew", map[string]any{"lease_id": lease.LeaseID, "increment": 86400}},
		{"orphan token", "auth/token/create-orphan", map[string]any{"policies": []string{vaulttest.TaskPolicy}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := valet.Logical().Write(tc.path, tc.body); err == nil || !strings.Contains(err.Error(), "permission denied") {
				t.Fatalf("Valet's policy allowed %s: %v", tc.path, err)
			}
		})
	}
	if ok, err := e.vault.LeaseExists(lease.LeaseID); !ok || err != nil {
		t.Fatalf("the lease was revoked: %v %v", ok, err)
	}
	if _, err := valet.Logical().Write("sys/leases/revoke/"+lease.LeaseID, map[string]any{"sync": true}); err != nil {
		t.Fatalf("Valet's policy does not let it revoke a database lease by path: %v", err)
	}
	if ok, err := e.vault.LeaseExists(lease.LeaseID); ok || err != nil {
		t.Fatalf("the lease survived: %v %v", ok, err)
	}
}

// TestVaultMintRefusesDefaultPolicy (issue 17, finding 3): a token role
// that attaches Vault's default policy (token_no_default_policy unset) is
// refused: the token is revoked and nothing is handed out.
func TestVaultMintRefusesDefaultPolicy(t *testing.T) {
	e := newVaultEnv(t, false)
	if _, err := e.vault.Root().Logical().Write("auth/token/roles/"+vaulttest.TokenRole, map[string]any{
		"token_no_default_policy": false,
	}); err != nil {
		t.Fatal(err)
	}
	task := vaultTask(e.now, 5*time.Minute)
	spec := policy.VaultSpec{TokenRole: vaulttest.TokenRole, Policies: []string{vaulttest.TaskPolicy}}
	if m, err := e.issuer.Mint(context.Background(), task, broker.Principal{}, vaultGrant(spec)); err == nil || !strings.Contains(err.Error(), "default policy") {
		t.Fatalf("minted %d credentials with the default policy attached: %v", len(m), err)
	}
	if live := taskTokensOf(t, e.vault, task.ID); len(live) != 0 {
		t.Fatalf("task tokens left live: %v", live)
	}
}

// TestVaultMetadataBounded (issue 17, finding 9): what Valet writes into
// Vault token metadata is bounded and free of control and format
// characters, whatever the agent's name.
func TestVaultMetadataBounded(t *testing.T) {
	e := newVaultEnv(t, false)
	task := vaultTask(e.now, 5*time.Minute)
	task.Agent = "agent\nforged: line\x00\u202eevil" + strings.Repeat("é", 3000)
	spec := policy.VaultSpec{TokenRole: vaulttest.TokenRole, Policies: []string{vaulttest.TaskPolicy}}
	m, err := e.issuer.Mint(context.Background(), task, broker.Principal{}, vaultGrant(spec))
	if err != nil {
		t.Fatal(err)
	}
	meta := lookup(t, e.vault, m[0].ID).Data["meta"].(map[string]any)
	agent, _ := meta["agent"].(string)
	if len(agent) > 256 || !strings.HasPrefix(agent, "agent?forged: line??evil") {
		t.Fatalf("agent metadata = %q (%d bytes)", agent[:min(len(agent), 40)], len(agent))
	}
	for _, r := range agent {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			t.Fatalf("agent metadata holds %U", r)
		}
	}
	if meta["valet_task_id"] != task.ID {
		t.Fatalf("task id metadata = %v", meta["valet_task_id"])
	}
}
