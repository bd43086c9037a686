package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/vaulttest"
	"github.com/valet-dev/valet/issuers"
)

// TestServeWithVault runs `valet serve` with a vault block against a real
// Vault, Redis and IdP: /readyz checks Vault, and a declaration of a Vault
// template answers a task token and a Vault token.
func TestServeWithVault(t *testing.T) {
	vs := vaulttest.Start(t, vaulttest.Options{})
	rs := redistest.Start(t)
	idp := oidctest.New(t)
	dir := t.TempDir()
	key, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := issuers.EncodeSigningKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("key.pem", string(pemBytes))
	write("templates/db.yaml", `templates:
  - name: db
    principals: [{issuer: test}]
    ttl: {default: 5m, max: 15m}
    tools: [db.query]
    audiences: [https://tools.example.com]
    vault: {token_role: `+vaulttest.TokenRole+`, policies: [`+vaulttest.TaskPolicy+`]}
`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	write("config.yaml", `addr: `+addr+`
redis: {url: "`+rs.URL()+`"}
signing: {keys: [{file: key.pem}]}
issuers: [{name: test, issuer_url: "`+idp.URL()+`", audiences: [valet]}]
templates: {paths: [templates], watch: false}
log: {level: error}
vault:
  timeout: 1s
`)
	envVars := map[string]string{"VALET_VAULT_ADDR": vs.Addr(), "VALET_VAULT_TOKEN": vs.ValetToken(time.Hour)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cmdServe(ctx, env{getenv: func(k string) string { return envVars[k] }, stdout: io.Discard, stderr: io.Discard}, []string{"--config", filepath.Join(dir, "config.yaml")})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	base := "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("valet serve not ready after 10s (last: %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	req, _ := http.NewRequest(http.MethodPost, base+"/v1/tasks", strings.NewReader(`{"template":"db","intent":"look up an order","tools":["db.query"]}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+idp.Token(t, map[string]any{"sub": "agent-7"}))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Credentials []map[string]any `json:"credentials"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("declare: %d %v", resp.StatusCode, err)
	}
	if len(body.Credentials) != 2 || body.Credentials[1]["kind"] != "vault_token" {
		t.Fatalf("credentials: %v", body.Credentials)
	}
	if _, err := vs.LookupAccessor(body.Credentials[1]["accessor"].(string)); err != nil {
		t.Fatalf("the task token is not in Vault: %v", err)
	}

	// Vault cut off: /readyz says so.
	vs.Stop()
	resp, err = http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with Vault down: %d", resp.StatusCode)
	}
}
