package policy

import (
	"testing"
	"time"
)

func TestLoadTemplatesUsers(t *testing.T) {
	const head = "templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]\n"
	t.Run("valid", func(t *testing.T) {
		src := head + "    users:\n      - issuer: prod\n        condition: 'claims.email.endsWith(\"@example.com\")'\n      - issuer: dev\n" +
			"    conditions:\n      - name: same-tenant\n        expression: '!has(user.claims) || user.claims.tenant == principal.claims.tenant'\n"
		set, problems := loadInline(t, src, testIssuers)
		checkProblems(t, problems, nil)
		tmpl := mustGet(t, set, "a")
		if len(tmpl.Users) != 2 || tmpl.Users[0].Issuer != "prod" || tmpl.Users[0].Condition == nil ||
			tmpl.Users[0].Condition.Name != "users[0].condition" || tmpl.Users[1].Condition != nil {
			t.Fatalf("users = %+v", tmpl.Users)
		}
	})
	for _, tc := range []struct {
		name  string
		users string
		wants []want
	}{
		{"empty list", "    users: []\n", []want{{"inline.yaml", 7, "a", "templates[0].users", "must list at least one user rule"}}},
		{"not a list", "    users: prod\n", []want{{"inline.yaml", 7, "a", "templates[0].users", "must be a list of user rules"}}},
		{"unknown issuer", "    users: [{issuer: nope}]\n", []want{{"inline.yaml", 7, "a", "templates[0].users[0].issuer", `unknown issuer "nope"`}}},
		{"missing issuer", "    users: [{condition: 'true'}]\n", []want{{"inline.yaml", 7, "a", "templates[0].users[0].issuer", "is required"}}},
		{"unknown key", "    users:\n      - issuer: dev\n        subject: bob\n", []want{{"inline.yaml", 9, "a", "templates[0].users[0].subject", "unknown field"}}},
		{"condition over request vars", "    users:\n      - issuer: dev\n        condition: 'principal.subject == \"x\"'\n", []want{
			{"inline.yaml", 9, "a", "templates[0].users[0].condition", "undeclared reference to 'principal'"}}},
		{"condition not bool", "    users:\n      - issuer: dev\n        condition: 'size(claims)'\n", []want{
			{"inline.yaml", 9, "a", "templates[0].users[0].condition", "bool"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, problems := loadInline(t, head+tc.users, testIssuers)
			checkProblems(t, problems, tc.wants)
		})
	}
}

func TestTemplateCheckSeesUser(t *testing.T) {
	src := "templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]\n" +
		"    conditions:\n      - name: user-tenant\n        expression: 'size(user) == 0 || user.claims.tenant == principal.claims.tenant'\n"
	set, problems := loadInline(t, src, testIssuers)
	checkProblems(t, problems, nil)
	tmpl := mustGet(t, set, "a")
	agent := Identity{Issuer: "dev", Subject: "agent-1", Claims: map[string]any{"tenant": "t1"}}
	r := Request{Template: "a", Intent: "x", Tools: []string{"x"}, TTL: time.Minute}
	if rule, err := tmpl.Check(agent, nil, r, time.Now()); rule != "" || err != nil {
		t.Fatalf("no user: rule %q, err %v", rule, err)
	}
	user := &Identity{Issuer: "prod", Subject: "alice", Claims: map[string]any{"tenant": "t1"}}
	if rule, err := tmpl.Check(agent, user, r, time.Now()); rule != "" || err != nil {
		t.Fatalf("same tenant: rule %q, err %v", rule, err)
	}
	user.Claims["tenant"] = "t2"
	if rule, _ := tmpl.Check(agent, user, r, time.Now()); rule != "user-tenant" {
		t.Fatalf("other tenant: rule %q, want user-tenant", rule)
	}
}
