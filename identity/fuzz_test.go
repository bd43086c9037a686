package identity

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
)

// FuzzAuthenticate feeds Authenticate arbitrary strings, seeded with real
// tokens and the hostile set. Oracles: it never panics; whatever it accepts
// names the configured issuer and a non-empty subject; and nothing it
// accepts is anything but a token the issuer really signed (mutations of
// signed tokens, and random bytes, never verify).
func FuzzAuthenticate(f *testing.F) {
	iss := oidctest.New(f)
	start := time.Now()
	id, err := New(context.Background(), []IssuerConfig{devIssuer(iss)}, Options{
		Now:        func() time.Time { return start }, // frozen: no refresh after start-up
		SelfIssuer: testSelfIssuer,
		Logger:     quietLogger(),
	})
	if err != nil {
		f.Fatal(err)
	}

	signed := map[string]bool{}
	for _, tok := range []string{
		iss.Token(f, nil),
		iss.Token(f, nil, oidctest.WithAlg("ES256")),
		iss.Token(f, nil, oidctest.WithAlg("EdDSA")),
		iss.Token(f, map[string]any{"aud": []string{"valet", "other"}, "nbf": start.Unix(), "email": "a@example.com"}),
	} {
		signed[tok] = true
		f.Add(tok)
	}
	taskToken := iss.Token(f, map[string]any{"iss": testSelfIssuer, "task_id": "task_1"}, oidctest.WithHeader("typ", "at+jwt"))
	hostile, _ := oidctest.HostileTokens(f, iss, taskToken)
	for _, h := range hostile {
		if len(h.Token) <= 20<<10 { // the 1 MB cases are covered by unit tests
			f.Add(h.Token)
		}
	}

	f.Fuzz(func(t *testing.T, raw string) {
		p, err := id.Authenticate(context.Background(), raw)
		if err != nil {
			if errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("keys were loaded at start, yet: %v", err)
			}
			return
		}
		if !signed[raw] {
			t.Fatalf("accepted a token the issuer never signed: %q", raw)
		}
		if p.Subject == "" || p.Issuer != "dev" || p.IssuerURL != iss.URL() {
			t.Fatalf("accepted with a bad principal: %+v", p)
		}
	})
}
