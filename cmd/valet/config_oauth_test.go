package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

func TestOAuthConfigReportsEveryProblem(t *testing.T) {
	p := writeFile(t, t.TempDir(), "bad.yaml", `
issuers:
  - {name: clients, issuer_url: "https://idp.example.com", audiences: [valet]}
oauth:
  max_assertion_life: 2h
  clients:
    - {id: "", templates: []}
`)
	_, err := loadConfig(p, func(string) string { return "" })
	if err == nil {
		t.Fatal("bad config loaded")
	}
	for _, want := range []string{"oauth.max_assertion_life", "oauth.clients[0].id", "oauth.clients[0].jwks_file",
		"oauth.clients[0].templates", `the name "clients" is taken`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}

func TestOAuthClientKeys(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwk, _ := json.Marshal(jose.JSONWebKey{Key: pub, KeyID: "k1", Algorithm: "EdDSA"})
	dir := t.TempDir()
	writeFile(t, dir, "one.jwk", string(jwk))
	writeFile(t, dir, "set.jwks", `{"keys":[`+string(jwk)+`]}`)
	writeFile(t, dir, "bad.jwks", `{"keys":"no"}`)
	cfg := &Config{dir: dir, OAuth: OAuthConfig{Clients: []OAuthClientConfig{
		{ID: "a", JWKSFile: "one.jwk", Templates: []string{"t"}},
		{ID: "b", JWKSFile: "set.jwks", Templates: []string{"t"}},
	}}}
	o, err := cfg.oauthOptions()
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Clients) != 2 || o.Clients[0].Keys.Keys[0].KeyID != "k1" || o.Clients[1].Keys.Keys[0].KeyID != "k1" {
		t.Fatalf("clients %+v", o.Clients)
	}
	if names := cfg.agentIssuerNames([]string{"idp"}); len(names) != 2 || names[1] != "clients" {
		t.Errorf("issuer names %v", names)
	}
	cfg.OAuth.Clients = []OAuthClientConfig{{ID: "c", JWKSFile: "bad.jwks"}, {ID: "d", JWKSFile: "missing.jwks"}}
	if _, err := cfg.oauthOptions(); err == nil || !strings.Contains(err.Error(), "oauth.clients[0]") || !strings.Contains(err.Error(), "oauth.clients[1]") {
		t.Errorf("bad key files not both reported: %v", err)
	}
}

func TestOAuthInteractiveConfigReportsEveryProblem(t *testing.T) {
	p := writeFile(t, t.TempDir(), "bad.yaml", `
issuers:
  - {name: people, issuer_url: "https://idp.example.com", audiences: [valet]}
oauth:
  interactive:
    upstream: {issuer: "https://elsewhere.example.com"}
    code_ttl: 1h
    clients:
      - {id: "https://host.example.com/client.json"}
`)
	_, err := loadConfig(p, func(string) string { return "" })
	if err == nil {
		t.Fatal("bad config loaded")
	}
	for _, want := range []string{"oauth.interactive.upstream.issuer", "oauth.interactive.upstream.client_id", "oauth.interactive.code_ttl",
		"oauth.interactive.clients[0].id", "oauth.interactive.clients[0].redirect_uris", "oauth.interactive.clients[0].templates"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}
