package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/oidctest"
)

// TestIntrospectionClientsAdmitOnlyToolServers guards issue 9 #7: when
// introspection.issuers was a bare issuer name, every agent of that issuer
// could introspect and revoke every other agent's task (agent-a revoked
// agent-b's). A rule now names an issuer, an audience and the tool
// server's subjects, so agent-a's identity token gets 403 and the
// configured tool server's identity token is served.
func TestIntrospectionClientsAdmitOnlyToolServers(t *testing.T) {
	e := newEnv(t, envOptions{introspection: []clientauth.Rule{
		{Issuer: "test", Audience: oidctest.DefaultAudience, Subjects: []string{"svc-tools"}},
	}})
	_, victim := e.declared("agent-b", 120)
	form := "application/x-www-form-urlencoded"
	body := func() *strings.Reader { return strings.NewReader(url.Values{"token": {victim}}.Encode()) }

	attacker := e.identity("agent-a")
	for _, path := range []string{"/v1/introspect", "/v1/revoke"} {
		if r := e.do(http.MethodPost, path, attacker, form, body(), false); r.Status != http.StatusForbidden {
			t.Fatalf("agent-a's identity token on %s: %d %s, want 403", path, r.Status, r.Body)
		}
	}
	if e.introspect(victim)["active"] != true {
		t.Fatal("agent-b's task was ended by agent-a")
	}
	tool := e.identity("svc-tools")
	r := e.do(http.MethodPost, "/v1/introspect", tool, form, body(), false)
	if r.Status != http.StatusOK || r.json(t)["active"] != true {
		t.Fatalf("tool server introspect: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodPost, "/v1/revoke", tool, form, body(), false); r.Status != http.StatusOK {
		t.Fatalf("tool server revoke: %d %s", r.Status, r.Body)
	}
	if e.introspect(victim)["active"] != false {
		t.Fatal("revoked by the tool server, still active")
	}
}
