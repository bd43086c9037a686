package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProxyFlags: `valet proxy` reports every missing setting at once, and
// refuses template files with a broken upstreams block, naming the line.
func TestProxyFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"valet", "proxy", "--valet", "ftp://x"}, func(string) string { return "" }, &out, &errOut)
	msg := errOut.String()
	if code != 2 {
		t.Fatalf("exit %d: %s", code, msg)
	}
	for _, want := range []string{"--templates is required", "VALET_PROXY_CLIENT_SECRET", "exactly one of --identity-file", `--valet "ftp://x"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not say %q: %s", want, msg)
		}
	}

	dir := t.TempDir()
	tmpl := filepath.Join(dir, "t.yaml")
	if err := os.WriteFile(tmpl, []byte(`templates:
  - name: t
    principals: [{issuer: dev}]
    ttl: {default: 5m, max: 10m}
    tools: [a.read]
    audiences: [valet-proxy]
    upstreams:
      - name: a
        url: https://a.example.com
        credential: {from: task_token, as: header}
        routes: [{methods: [GET], path: /x, tool: b.read}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte("eyJ.x.y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	errOut.Reset()
	getenv := func(k string) string {
		if k == "VALET_PROXY_CLIENT_SECRET" {
			return "s"
		}
		return ""
	}
	code = run(context.Background(), []string{"valet", "proxy", "--templates", tmpl, "--client", "c", "--identity-file", tokFile,
		"--audit", filepath.Join(dir, "audit.jsonl")}, getenv, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "t.yaml:11") || !strings.Contains(errOut.String(), `"b.read" is not in the template's tools`) {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if tok, err := readTokenFile(tokFile); err != nil || tok != "eyJ.x.y" {
		t.Fatalf("readTokenFile = %q, %v", tok, err)
	}
	if tok, err := runTokenCommand(context.Background(), "echo  eyJ.a.b "); err != nil || tok != "eyJ.a.b" {
		t.Fatalf("runTokenCommand = %q, %v", tok, err)
	}
	if _, err := runTokenCommand(context.Background(), "true"); err == nil {
		t.Fatal("an identity command that prints nothing was accepted")
	}
}

// TestProxyOAuthProviders: the --oauth-providers file gives each
// provider's token endpoint, client id, the file its secret is read from
// and default scopes; every problem is reported at once.
func TestProxyOAuthProviders(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "corp.secret")
	if err := os.WriteFile(secret, []byte("  corp-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(text string) string {
		p := filepath.Join(dir, "providers.yaml")
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	got, err := readOAuthProviders(write(`providers:
  - name: corp
    token_url: https://idp.example.com/oauth2/token
    client_id: valet-proxy
    client_secret_file: ` + secret + `
    scopes: [crm.read]
  - name: local
    token_url: http://127.0.0.1:9000/token
    client_id: p
    client_secret_file: ` + secret + `
`))
	if err != nil || len(got) != 2 || got[0].ClientSecret != "corp-secret" || got[0].Scopes[0] != "crm.read" || got[1].TokenURL != "http://127.0.0.1:9000/token" {
		t.Fatalf("readOAuthProviders = %+v, %v", got, err)
	}
	_, err = readOAuthProviders(write(`providers:
  - name: Corp
    token_url: http://idp.example.com/token
    client_secret_file: ` + filepath.Join(dir, "missing") + `
  - name: b
    token_url: https://user:pw@idp.example.com/token
    client_id: x
`))
	for _, want := range []string{`providers[0].name "Corp"`, `providers[0].token_url "http://idp.example.com/token": must be an https URL`,
		"providers[0].client_id: is required", "providers[0].client_secret_file: open", "providers[1].token_url", "providers[1].client_secret_file: is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
	if _, err := readOAuthProviders(write("providers:\n  - name: a\n    client_secret: inline\n")); err == nil || !strings.Contains(err.Error(), "client_secret not found") {
		t.Errorf("an inline client secret: %v", err)
	}
}
