package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfigExample(t *testing.T) {
	cfg, err := loadConfig("../../examples/serve.yaml", func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Redis.URL != "redis://127.0.0.1:6379/0" || cfg.Issuers[0].Name != "dev" || !strings.HasSuffix(cfg.Templates.Paths[0], "examples/templates") {
		t.Fatalf("unexpected config: %+v", cfg)
	}
}

func TestLoadConfigReportsEveryProblem(t *testing.T) {
	p := writeFile(t, t.TempDir(), "bad.yaml", `
public_url: not-a-url
redis: {url: "http://wrong"}
log: {level: loud, format: xml}
introspection:
  clients:
    - {id: "", secret_sha256: "abc"}
reaper: {interval: 1ms}
identity: {leeway: 5m}
`)
	_, err := loadConfig(p, func(string) string { return "" })
	if err == nil {
		t.Fatal("bad config loaded")
	}
	for _, want := range []string{"public_url", "redis.url", "log.level", "log.format", "signing.keys", "issuers",
		"templates.paths", "introspection.clients[0].id", "introspection.clients[0].secret_sha256", "reaper.interval", "identity.leeway"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}

func TestLoadConfigRejectsUnknownKeys(t *testing.T) {
	p := writeFile(t, t.TempDir(), "typo.yaml", "redis:\n  urll: redis://x\n")
	_, err := loadConfig(p, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "urll") || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("unknown key not reported with its line: %v", err)
	}
}

func TestEnvOverrides(t *testing.T) {
	env := map[string]string{
		"VALET_ADDR": "0.0.0.0:9000", "VALET_PUBLIC_URL": "https://valet.example.com", "VALET_REDIS_URL": "redis://r:6379/2",
		"VALET_LOG_LEVEL": "debug", "VALET_LOG_FORMAT": "text", "VALET_AUDIT_FILE": "/var/log/valet/audit.jsonl",
		"VALET_SIGNING_KEY_FILE": "/etc/valet/key.pem", "VALET_TEMPLATES": "/a:/b", "VALET_REAPER_INTERVAL": "2s",
		"VALET_VAULT_ADDR": "https://vault.example.com:8200", "VALET_VAULT_TOKEN": "hvs.test-token",
	}
	cfg, err := loadConfig("../../examples/serve.yaml", func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != "0.0.0.0:9000" || cfg.PublicURL != "https://valet.example.com" || cfg.Redis.URL != "redis://r:6379/2" ||
		cfg.Log.Level != "debug" || cfg.Log.Format != "text" || cfg.Audit.File != "/var/log/valet/audit.jsonl" ||
		cfg.Signing.Keys[0].File != "/etc/valet/key.pem" || len(cfg.Templates.Paths) != 2 || time.Duration(cfg.Reaper.Interval) != 2*time.Second {
		t.Fatalf("overrides not applied: %+v", cfg)
	}
	if cfg.Vault == nil || cfg.Vault.Address != "https://vault.example.com:8200" || cfg.Vault.Auth.Method != "token" || cfg.Vault.token != "hvs.test-token" {
		t.Fatalf("vault overrides not applied: %+v", cfg.Vault)
	}
	if len(env) != len(envOverrides) {
		t.Fatalf("test covers %d of %d overrides", len(env), len(envOverrides))
	}
}

// TestREADMEListsEveryEnvVar keeps the configuration reference honest.
func TestREADMEListsEveryEnvVar(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range envOverrides {
		if !bytes.Contains(readme, []byte("`"+name+"`")) {
			t.Errorf("README.md does not document %s", name)
		}
	}
	documented := regexp.MustCompile("`(VALET_[A-Z_]+)`").FindAllSubmatch(readme, -1)
	for _, m := range documented {
		name := string(m[1])
		if _, ok := envOverrides[name]; !ok && name != "VALET_CONFIG" {
			t.Errorf("README.md documents %s, which nothing reads", name)
		}
	}
}

func TestTemplatesCheck(t *testing.T) {
	dir := t.TempDir()
	bad := writeFile(t, dir, "bad.yaml", `
templates:
  - name: Bad Name
    description: x
    principals: []
    ttl: {default: 20m, max: 10m}
    tools: ["*"]
    audiences: []
`)
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"valet", "templates", "check", "../../examples/templates", bad}, os.Getenv, &out, &errOut)
	if code != 1 {
		t.Fatalf("exit %d for a bad file; stderr: %s", code, errOut.String())
	}
	for _, want := range []string{"bad.yaml:3", "templates[0].name", "templates[0].principals", "templates[0].ttl", "templates[0].tools[0]", "templates[0].audiences"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, errOut.String())
		}
	}
	out.Reset()
	if code := run(context.Background(), []string{"valet", "templates", "check", "../../examples/templates"}, os.Getenv, &out, &errOut); code != 0 {
		t.Fatalf("the example templates fail the check: %s", errOut.String())
	}
	if !strings.Contains(out.String(), "support-triage") {
		t.Fatalf("check output: %s", out.String())
	}
}

// TestTemplatesCheckTypes: a condition that misnames a field or uses a
// value as the wrong type fails the check at its file and line, naming the
// fields that exist, rather than loading and denying every request.
func TestTemplatesCheckTypes(t *testing.T) {
	bad := writeFile(t, t.TempDir(), "typo.yaml", `templates:
  - name: typo
    principals: [{issuer: dev}]
    ttl: {default: 5m, max: 10m}
    tools: [x]
    audiences: [y]
    conditions:
      - name: intent
        expression: 'request.intnet != ""'
      - name: ttl
        expression: 'size(request.ttl) > 0'
`)
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"valet", "templates", "check", bad}, os.Getenv, &out, &errOut); code != 1 {
		t.Fatalf("exit %d for conditions that cannot type-check; stderr: %s", code, errOut.String())
	}
	for _, want := range []string{
		"typo.yaml:9: template \"typo\": templates[0].conditions[0].expression: invalid CEL: 1:8: undefined field 'intnet' (request has template, intent, tools, ttl, context)",
		"typo.yaml:11: template \"typo\": templates[0].conditions[1].expression: invalid CEL: 1:5: found no matching overload for 'size' applied to '(duration)'",
	} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, errOut.String())
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"valet"}, {"valet", "nope"}, {"valet", "serve"}, {"valet", "keys", "generate"}, {"valet", "dev", "token"}} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), args, func(string) string { return "" }, &out, &errOut); code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, code, errOut.String())
		}
	}
}

// TestApprovalCapsConfig: approvals.max_pending_per_task and
// max_pending_per_agent reach the broker and are bounded (0 = default).
func TestApprovalCapsConfig(t *testing.T) {
	c := &Config{Approvals: ApprovalsConfig{MaxPendingPerTask: 3, MaxPendingPerAgent: 9}}
	ac, err := c.agentConfig(func(string) string { return "" })
	if err != nil || ac.Approvals.MaxPendingPerTask != 3 || ac.Approvals.MaxPendingPerAgent != 9 {
		t.Fatalf("caps %+v %v", ac.Approvals, err)
	}
	c = &Config{Approvals: ApprovalsConfig{MaxPendingPerTask: -1, MaxPendingPerAgent: 1001}}
	_, err = c.agentConfig(func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), "approvals.max_pending_per_task") || !strings.Contains(err.Error(), "approvals.max_pending_per_agent") {
		t.Fatalf("bad caps: %v", err)
	}
}

// TestIntrospectionClientsConfig guards issue 9 #7: introspection.issuers
// takes rules, and a rule that agents' own identity tokens satisfy (issuer
// and audience with no subjects or claims), a bare issuer name, an unknown
// issuer or an audience the issuer does not accept is refused, naming the key.
func TestIntrospectionClientsConfig(t *testing.T) {
	base := "addr: 127.0.0.1:8080\nredis: {url: redis://127.0.0.1:6379/0}\nsigning: {keys: [{file: k.pem}]}\n" +
		"templates: {paths: [t]}\nissuers:\n  - {name: k8s, issuer_url: https://k8s.example.com, audiences: [valet]}\n"
	for _, tc := range []struct {
		name, rules string
		want        []string // each must appear in the error; none means valid
	}{
		{"subjects", "  issuers:\n    - {issuer: k8s, audience: valet, subjects: [system:serviceaccount:tools:kb]}\n", nil},
		{"claims", "  issuers:\n    - {issuer: k8s, audience: valet, claims: {azp: kb-server}}\n", nil},
		{"agents satisfy it", "  issuers:\n    - {issuer: k8s, audience: valet}\n",
			[]string{"introspection.issuers[0].subjects", "admits every agent"}},
		{"bare issuer name", "  issuers: [k8s]\n", []string{"introspection.issuers", "bare issuer name"}},
		{"unknown issuer", "  issuers:\n    - {issuer: dev, audience: valet, subjects: [x]}\n", []string{"introspection.issuers[0].issuer"}},
		{"audience not accepted", "  issuers:\n    - {issuer: k8s, audience: tools, subjects: [x]}\n", []string{"introspection.issuers[0].audience"}},
		{"unknown key", "  issuers:\n    - {issuer: k8s, audience: valet, subject: x}\n", []string{`unknown key "subject"; valid keys here: audience, claims, issuer, subjects`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "c.yaml", base+"introspection:\n"+tc.rules)
			cfg, err := loadConfig(p, func(string) string { return "" })
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				if r := cfg.introspectionRules(); len(r) != 1 || r[0].Issuer != "k8s" || r[0].Audience != "valet" {
					t.Fatalf("rules = %+v", r)
				}
				return
			}
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v does not contain %q", err, w)
				}
			}
		})
	}
}

// TestServeConfigEveryProblemInOneRun: unknown keys (with the valid keys
// listed), values of the wrong kind, invalid settings and missing files
// are all reported by one `valet serve`, with no Go type names.
func TestServeConfigEveryProblemInOneRun(t *testing.T) {
	p := writeFile(t, t.TempDir(), "bad.yaml", `
public_url: nope
log: {level: loud, formatt: json}
redis: {url: "http://x", retention: forever, prefixx: a}
signing:
  keys: [{file: /nonexistent/key.pem, kidd: x}]
issuers: {name: dev}
templates: {paths: [/nonexistent/templates]}
limits: {max_body_bytes: lots}
`)
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"valet", "serve", "--config", p}, func(string) string { return "" }, &out, &errOut); code != 1 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	msg := errOut.String()
	for _, want := range []string{
		`log.formatt: unknown key "formatt"; valid keys here: format, level`,
		`redis.prefixx: unknown key "prefixx"; valid keys here: addrs, durability, master_name, mode, password_env, prefix, replica_timeout, retention, sentinel_password_env, tls, url, username`,
		`signing.keys[0].kidd: unknown key "kidd"; valid keys here: file, kid, retired`,
		`"forever" is not a duration`, `found a mapping where a list is expected`, `found "lots" where a whole number is expected`,
		"public_url", "redis.url", "log.level", "signing.keys[0].file", "/nonexistent/templates",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("one run does not report %s:\n%s", want, msg)
		}
	}
	if regexp.MustCompile(`main\.|int64|\[\]string|!!`).MatchString(msg) {
		t.Errorf("Go type names or YAML tags in the message:\n%s", msg)
	}
}
