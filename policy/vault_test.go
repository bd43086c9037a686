package policy

import (
	"strings"
	"testing"
	"time"
)

const vaultTemplateHead = `templates:
  - name: db
    principals: [{issuer: dev}]
    ttl: {default: 5m, max: 15m}
    tools: [db.query]
    audiences: [https://tools.example.com]
`

func TestTemplateVaultBlockValid(t *testing.T) {
	set, problems := loadInline(t, vaultTemplateHead+`    vault:
      token_role: valet-task
      policies: [valet-db, kv-read]
      database_role: readonly
      wrap_ttl: 2m
`, testIssuers)
	if problems != nil {
		t.Fatalf("problems: %v", problems)
	}
	v := mustGet(t, set, "db").Vault
	if v == nil || v.TokenRole != "valet-task" || strings.Join(v.Policies, ",") != "valet-db,kv-read" ||
		v.NumUses != 0 || v.DatabaseRole != "readonly" || v.WrapTTL != 2*time.Minute {
		t.Fatalf("vault block = %+v", v)
	}
	set, problems = loadInline(t, vaultTemplateHead+"    vault: {token_role: r, policies: [p], num_uses: 20}\n", testIssuers)
	if problems != nil {
		t.Fatalf("problems: %v", problems)
	}
	if v := mustGet(t, set, "db").Vault; v.NumUses != 20 {
		t.Fatalf("num_uses = %d", v.NumUses)
	}

	set, problems = loadInline(t, vaultTemplateHead+"    vault: {token_role: r, policies: [p]}\n", testIssuers)
	if problems != nil {
		t.Fatalf("problems: %v", problems)
	}
	if v := mustGet(t, set, "db").Vault; v.NumUses != 0 || v.DatabaseRole != "" || v.WrapTTL != 0 {
		t.Fatalf("optional fields not zero: %+v", v)
	}
	set, _ = loadInline(t, vaultTemplateHead, testIssuers)
	if mustGet(t, set, "db").Vault != nil {
		t.Fatal("a template without a vault block has one")
	}
}

func TestTemplateVaultBlockInvalid(t *testing.T) {
	cases := []struct {
		name, block string
		field, msg  string
		line        int
	}{
		{"not a mapping", "    vault: yes\n", "templates[0].vault", "must be a mapping", 7},
		{"no token role", "    vault: {policies: [p]}\n", "templates[0].vault.token_role", "is required", 7},
		{"no policies", "    vault: {token_role: r}\n", "templates[0].vault.policies", "is required", 7},
		{"empty policies", "    vault:\n      token_role: r\n      policies: []\n", "templates[0].vault.policies", "at least one policy", 9},
		{"root policy", "    vault:\n      token_role: r\n      policies: [p, root]\n", "templates[0].vault.policies[1]", "root policy", 9},
		{"root with a space", "    vault:\n      token_role: r\n      policies: [\" root\"]\n", "templates[0].vault.policies[0]", "root policy", 9},
		{"ROOT", "    vault:\n      token_role: r\n      policies: [ROOT]\n", "templates[0].vault.policies[0]", "root policy", 9},
		{"upper-case policy", "    vault:\n      token_role: r\n      policies: [Admin]\n", "templates[0].vault.policies[0]", "not a valid policy name", 9},
		{"role with a slash", "    vault:\n      token_role: ../sys\n      policies: [p]\n", "templates[0].vault.token_role", "not a valid token role name", 8},
		{"database role with a slash", "    vault:\n      token_role: r\n      policies: [p]\n      database_role: a/b\n", "templates[0].vault.database_role", "not a valid database role name", 10},
		{"negative num_uses", "    vault:\n      token_role: r\n      policies: [p]\n      num_uses: -1\n", "templates[0].vault.num_uses", "whole number", 10},
		{"text num_uses", "    vault:\n      token_role: r\n      policies: [p]\n      num_uses: \"3\"\n", "templates[0].vault.num_uses", "whole number", 10},
		{"wrap_ttl too long", "    vault:\n      token_role: r\n      policies: [p]\n      wrap_ttl: 10m\n", "templates[0].vault.wrap_ttl", "longer than the limit of 5m0s", 10},
		{"wrap_ttl not a duration", "    vault:\n      token_role: r\n      policies: [p]\n      wrap_ttl: soon\n", "templates[0].vault.wrap_ttl", "not a duration", 10},
		{"num_uses with database_role", "    vault:\n      token_role: r\n      policies: [p]\n      database_role: ro\n      num_uses: 2\n", "templates[0].vault.num_uses", "cannot be combined with database_role", 11},
		{"unknown key", "    vault:\n      token_role: r\n      policies: [p]\n      ttl: 5m\n", "templates[0].vault.ttl", "unknown field", 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, problems := loadInline(t, vaultTemplateHead+tc.block, testIssuers)
			if len(problems) != 1 {
				t.Fatalf("want one problem, got %v", problems)
			}
			p := problems[0]
			if p.File != "inline.yaml" || p.Template != "db" || p.Field != tc.field || p.Line != tc.line || !strings.Contains(p.Message, tc.msg) {
				t.Fatalf("problem = %s; want %s at line %d with %q", p, tc.field, tc.line, tc.msg)
			}
		})
	}
}
