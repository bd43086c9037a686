package broker

import (
	"strings"
	"testing"
)

// TestIntrospectionRuleAdmits guards issue 9 #7: only a principal of the
// rule's issuer, with the rule's audience among its aud values, and the
// rule's subject or claim values is an introspection client; an agent of
// the same issuer and audience is not.
func TestIntrospectionRuleAdmits(t *testing.T) {
	tool := Principal{Issuer: "k8s", Subject: "system:serviceaccount:tools:kb", Claims: map[string]any{
		"aud": []any{"valet", "other"}, "azp": "kb-server"}}
	agent := Principal{Issuer: "k8s", Subject: "agent-a", Claims: map[string]any{"aud": "valet"}}
	bySubject := IntrospectionRule{Issuer: "k8s", Audience: "valet", Subjects: []string{"system:serviceaccount:tools:kb"}}
	byClaim := IntrospectionRule{Issuer: "k8s", Audience: "valet", Claims: map[string]string{"azp": "kb-server"}}
	for _, tc := range []struct {
		name string
		rule IntrospectionRule
		p    Principal
		want bool
	}{
		{"tool server by subject", bySubject, tool, true},
		{"tool server by claim", byClaim, tool, true},
		{"agent of the same issuer and audience", bySubject, agent, false},
		{"agent, claim rule", byClaim, agent, false},
		{"other issuer", bySubject, Principal{Issuer: "dev", Subject: tool.Subject, Claims: tool.Claims}, false},
		{"other audience", IntrospectionRule{Issuer: "k8s", Audience: "valet-introspect", Subjects: bySubject.Subjects}, tool, false},
		{"claim of another type", byClaim, Principal{Issuer: "k8s", Subject: "x", Claims: map[string]any{"aud": "valet", "azp": []any{"kb-server"}}}, false},
		{"rule without subject rule admits nobody", IntrospectionRule{Issuer: "k8s", Audience: "valet"}, agent, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.rule.admits(tc.p); got != tc.want {
				t.Fatalf("admits = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestIntrospectionRuleValidate: NewService refuses a rule every agent of
// the issuer satisfies.
func TestIntrospectionRuleValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		rule IntrospectionRule
		want string
	}{
		{"issuer and audience only", IntrospectionRule{Issuer: "k8s", Audience: "valet"}, "subjects or claims are required"},
		{"no audience", IntrospectionRule{Issuer: "k8s", Subjects: []string{"svc"}}, "audience is required"},
		{"no issuer", IntrospectionRule{Audience: "valet", Subjects: []string{"svc"}}, "issuer is required"},
		{"empty subject", IntrospectionRule{Issuer: "k8s", Audience: "valet", Subjects: []string{" "}}, "subjects has an empty value"},
		{"empty claim value", IntrospectionRule{Issuer: "k8s", Audience: "valet", Claims: map[string]string{"azp": ""}}, "claims has an empty"},
		{"valid", IntrospectionRule{Issuer: "k8s", Audience: "valet", Subjects: []string{"svc"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.rule.validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("validate = %v, want %q", err, tc.want)
			}
		})
	}
}
