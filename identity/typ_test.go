package identity

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/testkit"
)

// TestIdentityTokenTypes guards issue 9 (low, RFC 9068): identity tokens
// with typ at+jwt (access tokens issued for Valet's audience) were refused
// from every issuer. The accepted typ values are now a per-issuer setting;
// by default absent, JWT and at+jwt are accepted (the aud check still
// applies), other types are refused, and Valet's own task tokens stay
// refused by issuer whatever their typ.
func TestIdentityTokenTypes(t *testing.T) {
	iss := oidctest.New(t)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(t, clock,
		devIssuer(iss),
		IssuerConfig{Name: "strict", IssuerURL: iss.URL() + "/strict", JWKSURL: iss.URL() + "/jwks", Audiences: []string{"valet"}, Types: []string{"JWT"}},
	)
	strict := map[string]any{"iss": iss.URL() + "/strict"}
	typ := func(v any) oidctest.Option { return oidctest.WithHeader("typ", v) }
	for _, tc := range []struct {
		name  string
		token string
		ok    bool
	}{
		{"default: no typ", iss.Token(t, nil, typ(nil)), true},
		{"default: JWT", iss.Token(t, nil, typ("JWT")), true},
		{"default: at+jwt", iss.Token(t, nil, typ("at+jwt")), true},
		{"default: application/at+jwt", iss.Token(t, nil, typ("application/at+jwt")), true},
		{"default: AT+JWT", iss.Token(t, nil, typ("AT+JWT")), true},
		{"default: at+jwt for another audience", iss.Token(t, map[string]any{"aud": "https://api.example.com"}, typ("at+jwt")), false},
		{"default: dpop+jwt", iss.Token(t, nil, typ("dpop+jwt")), false},
		{"default: secevent+jwt", iss.Token(t, nil, typ("secevent+jwt")), false},
		{"Valet's own task token, at+jwt", iss.Token(t, map[string]any{"iss": testSelfIssuer, "task_id": "tsk_1"}, typ("at+jwt")), false},
		{"types [JWT]: JWT", iss.Token(t, strict, typ("JWT")), true},
		{"types [JWT]: application/jwt", iss.Token(t, strict, typ("application/jwt")), true},
		{"types [JWT]: at+jwt", iss.Token(t, strict, typ("at+jwt")), false},
		{"types [JWT]: no typ", iss.Token(t, strict, typ(nil)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := id.Authenticate(context.Background(), tc.token)
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("accepted: %+v", p)
			}
		})
	}
}

func TestIdentityTokenTypesConfig(t *testing.T) {
	for _, tc := range []struct {
		types []string
		want  string
	}{
		{[]string{""}, "issuers[0].types[0]"},
		{[]string{"JWT", "at jwt"}, "issuers[0].types[1]"},
		{[]string{"dpop+jwt"}, "issuers[0].types[0]: \"dpop+jwt\" is a DPoP proof type"},
	} {
		errs := ValidateIssuers([]IssuerConfig{{Name: "a", IssuerURL: "https://a.example", Audiences: []string{"valet"}, Types: tc.types}}, "")
		if len(errs) == 0 || !strings.Contains(errs[0].Error(), tc.want) {
			t.Errorf("types %q: %v, want %q", tc.types, errs, tc.want)
		}
	}
	if errs := ValidateIssuers([]IssuerConfig{{Name: "a", IssuerURL: "https://a.example", Audiences: []string{"valet"}, Types: []string{"absent", "JWT"}}}, ""); len(errs) != 0 {
		t.Errorf("valid types refused: %v", errs)
	}
}
