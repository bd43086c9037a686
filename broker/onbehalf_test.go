package broker

import (
	"errors"
	"strings"
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

func TestTemplateAdmitsUser(t *testing.T) {
	src := "templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]\n" +
		"    users:\n      - issuer: prod\n        condition: 'claims.email.endsWith(\"@example.com\")'\n" +
		"  - name: b\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]\n"
	set, problems := loadInline(t, src, testIssuers)
	checkProblems(t, problems, nil)
	a, b := mustGet(t, set, "a"), mustGet(t, set, "b")
	alice := Principal{Issuer: "prod", Subject: "alice", Claims: map[string]any{"email": "alice@example.com"}}
	for _, tc := range []struct {
		name    string
		tmpl    *Template
		u       *Principal
		wantErr bool
	}{
		{"no user needs no rule", b, nil, false},
		{"admitted", a, &alice, false},
		{"claims fail the condition", a, &Principal{Issuer: "prod", Subject: "mallory", Claims: map[string]any{"email": "m@evil.test"}}, true},
		{"condition errors (no email)", a, &Principal{Issuer: "prod", Subject: "bob"}, true},
		{"other issuer", a, &Principal{Issuer: "dev", Subject: "alice", Claims: alice.Claims}, true},
		{"template without users", b, &alice, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkUser(tc.tmpl, tc.u)
			if (err != nil) != tc.wantErr {
				t.Fatalf("checkUser = %v, want error %v", err, tc.wantErr)
			}
			var e *Error
			if err != nil && (!errors.As(err, &e) || e.Code != CodeForbidden || e.Rule != "users" || strings.Contains(e.Message, "alice")) {
				t.Fatalf("error = %#v, want a 403 by rule users that does not name the user", err)
			}
		})
	}
}

func TestTemplateCheckSeesUser(t *testing.T) {
	src := "templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]\n" +
		"    conditions:\n      - name: user-tenant\n        expression: 'size(user) == 0 || user.claims.tenant == principal.claims.tenant'\n"
	set, problems := loadInline(t, src, testIssuers)
	checkProblems(t, problems, nil)
	tmpl := mustGet(t, set, "a")
	agent := Principal{Issuer: "dev", Subject: "agent-1", Claims: map[string]any{"tenant": "t1"}}
	d := Declaration{Template: "a", Intent: "x", Tools: []string{"x"}}
	if rule, err := tmpl.Check(agent, d, time.Minute, time.Now()); rule != "" || err != nil {
		t.Fatalf("no user: rule %q, err %v", rule, err)
	}
	d.User = &Principal{Issuer: "prod", Subject: "alice", Claims: map[string]any{"tenant": "t1"}}
	if rule, err := tmpl.Check(agent, d, time.Minute, time.Now()); rule != "" || err != nil {
		t.Fatalf("same tenant: rule %q, err %v", rule, err)
	}
	d.User.Claims["tenant"] = "t2"
	if rule, _ := tmpl.Check(agent, d, time.Minute, time.Now()); rule != "user-tenant" {
		t.Fatalf("other tenant: rule %q, want user-tenant", rule)
	}
}

func TestDecodeDeclarationSubjectToken(t *testing.T) {
	base := `{"template":"t","intent":"do it","tools":["x"]`
	for _, tc := range []struct {
		name, body, wantField, wantToken string
	}{
		{"absent", base + `}`, "", ""},
		{"present", base + `,"subject_token":"eyJ.a.b"}`, "", "eyJ.a.b"},
		{"empty", base + `,"subject_token":""}`, "subject_token", ""},
		{"not a string", base + `,"subject_token":1}`, "subject_token", ""},
		{"too long", base + `,"subject_token":"` + strings.Repeat("a", maxSubjectToken+1) + `"}`, "subject_token", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := DecodeDeclaration(strings.NewReader(tc.body))
			var e *Error
			switch {
			case tc.wantField == "" && err != nil:
				t.Fatalf("err = %v", err)
			case tc.wantField != "" && (!errors.As(err, &e) || e.Field != tc.wantField):
				t.Fatalf("err = %v, want field %s", err, tc.wantField)
			case tc.wantField == "" && d.SubjectToken != tc.wantToken:
				t.Fatalf("SubjectToken = %q", d.SubjectToken)
			}
		})
	}
}
