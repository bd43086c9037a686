package main

import (
	"strings"
	"testing"
)

// TestConsoleConfigProblems: admin.console must name an admin issuer, a
// client id that is not an admin API audience, and a session TTL within a
// day; every problem is reported in one run.
func TestConsoleConfigProblems(t *testing.T) {
	p := writeFile(t, t.TempDir(), "bad.yaml", `
public_url: https://valet.example.com
admin:
  issuers:
    - {name: corp, issuer_url: https://idp.example.com, audiences: [valet-admin]}
  roles: {viewer: 'true'}
  console: {issuer: nowhere, client_id: valet-admin, session_ttl: 48h}
`)
	_, err := loadConfig(p, func(string) string { return "" })
	if err == nil {
		t.Fatal("bad config loaded")
	}
	for _, want := range []string{`admin.console.issuer: "nowhere" is not the name of an admin.issuers entry`, "admin.console.session_ttl"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	p = writeFile(t, t.TempDir(), "aud.yaml", `
public_url: https://valet.example.com
admin:
  issuers:
    - {name: corp, issuer_url: https://idp.example.com, audiences: [valet-admin]}
  roles: {viewer: 'true'}
  console: {issuer: corp, client_id: valet-admin}
`)
	if _, err := loadConfig(p, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "admin.console.client_id") {
		t.Errorf("a client id that is an admin audience: %v", err)
	}
}
