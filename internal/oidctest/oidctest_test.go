package oidctest

import (
	"context"
	"net/http"
	"testing"

	"github.com/coreos/go-oidc/v3/oidc"
)

// TestTokensVerifyWithGoOIDC checks that what Token mints is a real ID token:
// go-oidc, going through discovery and the JWKS, accepts it.
func TestTokensVerifyWithGoOIDC(t *testing.T) {
	iss := New(t)
	ctx := context.Background()
	p, err := oidc.NewProvider(ctx, iss.URL())
	if err != nil {
		t.Fatal(err)
	}
	v := p.Verifier(&oidc.Config{ClientID: DefaultAudience, SupportedSigningAlgs: []string{"RS256", "ES256", "EdDSA"}})
	rotated := iss.AddKey("ES256")
	for _, tc := range []struct {
		name string
		opts []Option
	}{
		{"default", nil},
		{"ES256", []Option{WithAlg("ES256")}},
		{"EdDSA", []Option{WithAlg("EdDSA")}},
		{"rotated key", []Option{WithKID(rotated)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := v.Verify(ctx, iss.Token(t, map[string]any{"email": "a@example.com"}, tc.opts...))
			if err != nil {
				t.Fatal(err)
			}
			if tok.Subject != DefaultSubject || tok.Issuer != iss.URL() {
				t.Errorf("got sub %q iss %q", tok.Subject, tok.Issuer)
			}
		})
	}
	if iss.DiscoveryFetches() != 1 || iss.JWKSFetches() < 1 {
		t.Errorf("fetches: discovery %d, jwks %d", iss.DiscoveryFetches(), iss.JWKSFetches())
	}
}

func TestNilClaimIsOmitted(t *testing.T) {
	iss := New(t)
	tok := iss.Token(t, map[string]any{"sub": nil, "aud": []string{"a", "b"}})
	p, err := oidc.NewProvider(context.Background(), iss.URL())
	if err != nil {
		t.Fatal(err)
	}
	idt, err := p.Verifier(&oidc.Config{ClientID: "b"}).Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if idt.Subject != "" {
		t.Errorf("sub = %q, want it left out", idt.Subject)
	}
}

func TestHostileTokens(t *testing.T) {
	iss := New(t)
	cases, hits := HostileTokens(t, iss, "a.b.c")
	if len(cases) < 40 {
		t.Errorf("only %d hostile cases", len(cases))
	}
	seen := map[string]bool{}
	for _, c := range cases {
		if seen[c.Name] {
			t.Errorf("duplicate case %q", c.Name)
		}
		seen[c.Name] = true
	}
	if !seen["valet task token"] {
		t.Error("the Valet task token is not among the cases")
	}
	if hits() != 0 {
		t.Errorf("outbound hits = %d before anything ran", hits())
	}
}

func TestSetDown(t *testing.T) {
	iss := New(t)
	get := func(path string) int {
		resp, err := http.Get(iss.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	iss.SetDown(true)
	if a, b := get("/.well-known/openid-configuration"), get("/jwks"); a != http.StatusServiceUnavailable || b != http.StatusServiceUnavailable {
		t.Fatalf("down: discovery %d, jwks %d; want 503", a, b)
	}
	if iss.DiscoveryFetches() != 1 || iss.JWKSFetches() != 1 {
		t.Fatalf("fetches while down not counted: %d, %d", iss.DiscoveryFetches(), iss.JWKSFetches())
	}
	iss.SetDown(false)
	if a, b := get("/.well-known/openid-configuration"), get("/jwks"); a != http.StatusOK || b != http.StatusOK {
		t.Fatalf("back: discovery %d, jwks %d; want 200", a, b)
	}
}
