package e2e

import (
	"net/http"
	"strings"
	"testing"
)

// TestVaultTemplateWithoutVault: a template that asks for Vault credentials
// on a broker with no Vault configured is refused before anything is minted
// or recorded.
func TestVaultTemplateWithoutVault(t *testing.T) {
	e := newEnv(t, envOptions{templates: vaultTemplates})
	before := e.ledger.writes.Load()
	r := e.declare(e.identity("agent-7"), `{"template":"db","intent":"read the orders table","tools":["db.query"]}`)
	if r.Status != http.StatusInternalServerError || strings.Contains(string(r.Body), "access_token") ||
		!strings.Contains(string(r.Body), "no Vault configured") {
		t.Fatalf("declare for a Vault template without Vault: %d %s", r.Status, r.Body)
	}
	if n := e.ledger.writes.Load() - before; n != 0 {
		t.Fatalf("%d ledger writes for a refused declaration", n)
	}
}
