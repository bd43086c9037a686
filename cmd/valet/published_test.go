package main

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestPublishedSecretsAreRefused guards issue 9 (low): `valet serve`
// accepted the client secrets printed in the README, docs and `valet dev`,
// so a deployment that copied a walk-through was open to anyone who read
// it. Every published secret is refused for introspection and approver
// clients, given in the environment or as a hash, naming the key.
func TestPublishedSecretsAreRefused(t *testing.T) {
	for _, secret := range publishedSecrets {
		sum := sha256.Sum256([]byte(secret))
		for _, tc := range []struct{ name, entry, want string }{
			{"introspection env", "introspection:\n  clients: [{id: ts, secret_env: TS_SECRET}]\n", "introspection.clients[0] (environment variable TS_SECRET) is a secret published"},
			{"introspection hash", "introspection:\n  clients: [{id: ts, secret_sha256: " + hex.EncodeToString(sum[:]) + "}]\n", "introspection.clients[0].secret_sha256 is a secret published"},
			{"approver env", "approvals:\n  clients: [{id: alice, secret_env: TS_SECRET}]\n", "approvals.clients[0]: is a secret published"},
			{"approver hash", "approvals:\n  clients: [{id: alice, secret_sha256: " + hex.EncodeToString(sum[:]) + "}]\n", "approvals.clients[0]: is a secret published"},
		} {
			t.Run(secret+"/"+tc.name, func(t *testing.T) {
				cfg := &Config{}
				if err := yaml.Unmarshal([]byte(tc.entry), cfg); err != nil {
					t.Fatal(err)
				}
				getenv := func(k string) string {
					if k == "TS_SECRET" {
						return secret
					}
					return ""
				}
				_, err1 := cfg.clientSecrets(getenv)
				_, err2 := cfg.agentConfig(getenv)
				var msgs []string
				for _, err := range []error{err1, err2} {
					if err != nil {
						msgs = append(msgs, err.Error())
					}
				}
				if got := strings.Join(msgs, "\n"); !strings.Contains(got, tc.want) {
					t.Fatalf("errors %q do not contain %q", got, tc.want)
				}
			})
		}
	}
	// A secret of one's own is accepted.
	cfg := &Config{Clients: ClientsConfig{Clients: []ClientEntry{{ID: "ts", SecretEnv: "TS_SECRET"}}}}
	if _, err := cfg.clientSecrets(func(string) string { return "an-unpublished-secret-0123456789" }); err != nil {
		t.Fatal(err)
	}
}

// TestPublishedSecretsListed: every literal client secret in the README,
// docs, examples and deploy files is on the refused list.
func TestPublishedSecretsListed(t *testing.T) {
	patterns := []*regexp.Regexp{
		regexp.MustCompile(`-u [A-Za-z0-9_.-]+:([^\s$"']+)`),
		regexp.MustCompile(`(?:SECRET|_SECRET)=([^\s$"'.]+)`),
		regexp.MustCompile(`(?m)^\s*secret:\s*([^\s$"']+)`),
	}
	var files []string
	for _, root := range []string{"../../README.md", "../../docs", "../../examples", "../../deploy"} {
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".md") || strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml") || strings.HasSuffix(p, ".go")) {
				files = append(files, p)
			}
			return nil
		})
	}
	found := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, re := range patterns {
			for _, m := range re.FindAllStringSubmatch(string(data), -1) {
				v := m[1]
				if strings.HasPrefix(v, "<") || v == "..." || strings.HasPrefix(v, "$") {
					continue
				}
				found++
				if !slices.Contains(publishedSecrets, v) {
					t.Errorf("%s publishes the secret %q, which publishedSecrets does not list", f, v)
				}
			}
		}
	}
	if found == 0 {
		t.Fatal("no literal secret found in the docs: the patterns are broken")
	}
}
