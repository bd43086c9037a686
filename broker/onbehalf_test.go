package broker

import (
	"errors"
	"strings"
	"testing"

	"github.com/valet-dev/valet/policy"
)

func TestTemplateAdmitsUser(t *testing.T) {
	src := "templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]\n" +
		"    users:\n      - issuer: prod\n        condition: 'claims.email.endsWith(\"@example.com\")'\n" +
		"  - name: b\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]\n"
	set, err := policy.Load([]policy.File{{Name: "inline.yaml", Data: []byte(src)}}, []string{"dev", "prod"})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := set.Get("a")
	b, _ := set.Get("b")
	alice := Principal{Issuer: "prod", Subject: "alice", Claims: map[string]any{"email": "alice@example.com"}}
	for _, tc := range []struct {
		name    string
		tmpl    *policy.Template
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
