package identity

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/testkit"
)

// Authenticate must satisfy the port the Service consumes.
var _ broker.Authenticator = (*Verifier)(nil)

const testSelfIssuer = "https://valet.example"

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newTestIdentity(t testing.TB, clock *testkit.Clock, cfgs ...IssuerConfig) *Verifier {
	t.Helper()
	id, err := New(context.Background(), cfgs, Options{
		Now:        clock.Now,
		SelfIssuer: testSelfIssuer,
		Logger:     quietLogger(),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return id
}

func devIssuer(iss *oidctest.Issuer) IssuerConfig {
	return IssuerConfig{Name: "dev", IssuerURL: iss.URL(), Audiences: []string{"valet"}}
}

func TestAuthenticateAccepts(t *testing.T) {
	iss := oidctest.New(t)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(t, clock,
		devIssuer(iss),
		IssuerConfig{
			Name: "ci", IssuerURL: iss.URL() + "/ci", JWKSURL: iss.URL() + "/jwks", Audiences: []string{"other", "valet"},
			SubjectClaim: "agent", Condition: `claims.repository == "valet-dev/valet"`,
		},
	)
	ci := map[string]any{"iss": iss.URL() + "/ci", "agent": "builder", "repository": "valet-dev/valet"}

	tests := []struct {
		name        string
		token       string
		wantIssuer  string
		wantSubject string
	}{
		{"RS256", iss.Token(t, nil), "dev", "agent-test"},
		{"ES256", iss.Token(t, nil, oidctest.WithAlg("ES256")), "dev", "agent-test"},
		{"EdDSA", iss.Token(t, nil, oidctest.WithAlg("EdDSA")), "dev", "agent-test"},
		{"no typ header", iss.Token(t, nil, oidctest.WithHeader("typ", nil)), "dev", "agent-test"},
		{"aud list naming valet", iss.Token(t, map[string]any{"aud": []string{"someone", "valet"}}), "dev", "agent-test"},
		{"nbf and iat within leeway", iss.Token(t, map[string]any{
			"nbf": clock.Now().Add(20 * time.Second).Unix(), "iat": clock.Now().Add(20 * time.Second).Unix(),
		}), "dev", "agent-test"},
		{"expired within leeway", iss.Token(t, map[string]any{"exp": clock.Now().Add(-20 * time.Second).Unix()}), "dev", "agent-test"},
		{"custom subject claim and condition", iss.Token(t, ci), "ci", "builder"},
		{"second audience of the list", iss.Token(t, merge(ci, map[string]any{"aud": "other"})), "ci", "builder"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := id.Authenticate(context.Background(), tc.token)
			if err != nil {
				t.Fatalf("Authenticate: %v", err)
			}
			if p.Issuer != tc.wantIssuer || p.Subject != tc.wantSubject {
				t.Errorf("got issuer %q subject %q, want %q %q", p.Issuer, p.Subject, tc.wantIssuer, tc.wantSubject)
			}
			if p.IssuerURL != p.Claims["iss"] {
				t.Errorf("IssuerURL %q, claims iss %v", p.IssuerURL, p.Claims["iss"])
			}
			if exp, _ := p.Claims["exp"].(float64); p.TokenExpiry.Unix() != int64(exp) {
				t.Errorf("TokenExpiry %v, exp claim %v", p.TokenExpiry, p.Claims["exp"])
			}
		})
	}
}

func merge(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func TestAuthenticateRejects(t *testing.T) {
	iss := oidctest.New(t)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(t, clock,
		devIssuer(iss),
		IssuerConfig{
			Name: "ci", IssuerURL: iss.URL() + "/ci", JWKSURL: iss.URL() + "/jwks", Audiences: []string{"valet"},
			SubjectClaim: "agent", Condition: `claims.repository == "valet-dev/valet"`,
		},
		IssuerConfig{Name: "rsa-only", IssuerURL: iss.URL() + "/rsa", JWKSURL: iss.URL() + "/jwks", Audiences: []string{"valet"}, Algorithms: []string{"RS256"}},
	)
	ci := map[string]any{"iss": iss.URL() + "/ci", "agent": "builder", "repository": "valet-dev/valet"}
	tests := []struct {
		name, token string
	}{
		{"condition false", iss.Token(t, merge(ci, map[string]any{"repository": "evil/fork"}))},
		{"condition errors (claim missing)", iss.Token(t, merge(ci, map[string]any{"repository": nil}))},
		{"subject claim missing", iss.Token(t, merge(ci, map[string]any{"agent": nil}))},
		{"subject claim not a string", iss.Token(t, merge(ci, map[string]any{"agent": 7}))},
		{"subject claim empty", iss.Token(t, merge(ci, map[string]any{"agent": ""}))},
		{"sub empty though subject claim is set", iss.Token(t, merge(ci, map[string]any{"sub": ""}))},
		{"alg allowed elsewhere but not for this issuer", iss.Token(t, map[string]any{"iss": iss.URL() + "/rsa"}, oidctest.WithAlg("ES256"))},
		{"expired just past leeway", iss.Token(t, map[string]any{"exp": clock.Now().Add(-31 * time.Second).Unix()})},
		{"nbf just past leeway", iss.Token(t, map[string]any{"nbf": clock.Now().Add(31 * time.Second).Unix()})},
		{"self-issued", iss.Token(t, map[string]any{"iss": testSelfIssuer})},
		{"nonce not a string", iss.Token(t, map[string]any{"nonce": 7})},
		{"at_hash not a string", iss.Token(t, map[string]any{"at_hash": []any{"x"}})},
		{"_claim_names not an object", iss.Token(t, map[string]any{"_claim_names": "groups"})},
		{"_claim_names naming no source", iss.Token(t, map[string]any{"_claim_names": map[string]any{"groups": "src1"}})},
		{"_claim_names with an empty source", iss.Token(t, map[string]any{"_claim_names": map[string]any{"groups": ""},
			"_claim_sources": map[string]any{"": map[string]any{"endpoint": "https://x"}}})},
		{"_claim_sources endpoint not a string", iss.Token(t, map[string]any{"_claim_names": map[string]any{"groups": "s"},
			"_claim_sources": map[string]any{"s": map[string]any{"endpoint": 1}}})},
		{"iat not a number", iss.Token(t, map[string]any{"iat": "yesterday"})},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := id.Authenticate(context.Background(), tc.token)
			if err == nil {
				t.Fatalf("accepted: %+v", p)
			}
			if errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("rejection reported as unavailable: %v", err)
			}
		})
	}
}

func TestMultipleIssuersRouted(t *testing.T) {
	a, b := oidctest.New(t), oidctest.New(t)
	id := newTestIdentity(t, testkit.NewClock(time.Now()),
		IssuerConfig{Name: "a", IssuerURL: a.URL(), Audiences: []string{"valet"}},
		IssuerConfig{Name: "b", IssuerURL: b.URL(), Audiences: []string{"valet"}},
	)
	for _, tc := range []struct {
		name, token, want string
	}{
		{"from a", a.Token(t, map[string]any{"sub": "alice"}), "a"},
		{"from b", b.Token(t, map[string]any{"sub": "bob"}, oidctest.WithAlg("EdDSA")), "b"},
		{"a's key claiming b", a.Token(t, map[string]any{"iss": b.URL()}), ""},
		{"b's key claiming a", b.Token(t, map[string]any{"iss": a.URL()}, oidctest.WithAlg("ES256")), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := id.Authenticate(context.Background(), tc.token)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("a token signed by one issuer was accepted as another's: %+v", p)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.Issuer != tc.want {
				t.Errorf("issuer %q, want %q", p.Issuer, tc.want)
			}
		})
	}
	if len(id.Issuers()) != 2 || id.Issuers()[1].Name != "b" {
		t.Errorf("Issuers() = %+v", id.Issuers())
	}
}

func TestHostileTokensRejected(t *testing.T) {
	iss := oidctest.New(t)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(t, clock, devIssuer(iss))
	taskToken := iss.Token(t, map[string]any{"iss": testSelfIssuer, "task_id": "task_1"}, oidctest.WithHeader("typ", "at+jwt"))
	cases, outboundHits := oidctest.HostileTokens(t, iss, taskToken)
	if len(cases) < 40 {
		t.Fatalf("only %d hostile tokens", len(cases))
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			p, err := id.Authenticate(context.Background(), c.Token)
			if err == nil {
				t.Fatalf("accepted: %+v", p)
			}
			if errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("reported as unavailable, not rejected: %v", err)
			}
			t.Logf("rejected: %.300s", err)
			// The error is logged: it must not carry the token or any
			// substantial part of it.
			for _, part := range strings.Split(c.Token, ".") {
				if len(part) >= 24 && strings.Contains(err.Error(), part) {
					t.Errorf("error quotes the token: %.200s", err)
				}
			}
			if len(err.Error()) > 1024 {
				t.Errorf("error is %d bytes long", len(err.Error()))
			}
		})
	}
	if n := outboundHits(); n != 0 {
		t.Errorf("followed a URL from a token header %d times", n)
	}
	// Clock frozen: the unknown kids among the cases may not cause a single
	// fetch beyond the one at start-up.
	if n := iss.JWKSFetches(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1", n)
	}
	if n := iss.DiscoveryFetches(); n != 1 {
		t.Errorf("discovery fetched %d times, want 1", n)
	}
}

func randomKID(t testing.TB) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// flood authenticates n tokens with unknown kids concurrently; all must fail.
func flood(t *testing.T, id *Verifier, tokens []string) {
	t.Helper()
	var wg sync.WaitGroup
	var accepted, unavailable atomic.Int64
	for _, tok := range tokens {
		wg.Go(func() {
			_, err := id.Authenticate(context.Background(), tok)
			if err == nil {
				accepted.Add(1)
			} else if errors.Is(err, broker.ErrUnavailable) {
				unavailable.Add(1)
			}
		})
	}
	wg.Wait()
	if accepted.Load() != 0 || unavailable.Load() != 0 {
		t.Errorf("unknown kids: %d accepted, %d unavailable", accepted.Load(), unavailable.Load())
	}
}

func TestKIDFloodIsRateLimited(t *testing.T) {
	iss := oidctest.New(t)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(t, clock, devIssuer(iss))
	if n := iss.JWKSFetches(); n != 1 {
		t.Fatalf("JWKS fetched %d times at start-up, want 1", n)
	}
	tokens := func() []string {
		out := make([]string, 1000)
		for i := range out {
			out[i] = iss.Token(t, nil, oidctest.WithAlg("EdDSA"), oidctest.WithHeader("kid", randomKID(t)))
		}
		return out
	}

	flood(t, id, tokens())
	if n := iss.JWKSFetches(); n != 1 {
		t.Errorf("within the refresh interval of start-up: %d JWKS fetches, want 1", n)
	}

	clock.Advance(31 * time.Second)
	flood(t, id, tokens())
	if n := iss.JWKSFetches(); n != 2 {
		t.Errorf("after one interval: %d JWKS fetches, want exactly 2", n)
	}

	// A key rotated in now is unknown until the next allowed refresh.
	kid := iss.AddKey("ES256")
	rotated := iss.Token(t, nil, oidctest.WithKID(kid))
	if _, err := id.Authenticate(context.Background(), rotated); err == nil {
		t.Error("a key published after the last refresh was used without a refresh")
	}
	clock.Advance(31 * time.Second)
	p, err := id.Authenticate(context.Background(), rotated)
	if err != nil {
		t.Fatalf("rotated key not picked up after the interval: %v", err)
	}
	if p.Subject != "agent-test" {
		t.Errorf("subject %q", p.Subject)
	}
	if n := iss.JWKSFetches(); n != 3 {
		t.Errorf("after rotation: %d JWKS fetches, want 3", n)
	}
	// Known kids never fetch.
	for range 50 {
		if _, err := id.Authenticate(context.Background(), iss.Token(t, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if n := iss.JWKSFetches(); n != 3 {
		t.Errorf("known kids caused fetches: %d", n)
	}
	if n := iss.DiscoveryFetches(); n != 1 {
		t.Errorf("discovery ran %d times, want once", n)
	}
}

func TestIdPDownAtStart(t *testing.T) {
	iss := oidctest.New(t)
	iss.SetDown(true)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(t, clock, IssuerConfig{Name: "flaky", IssuerURL: iss.URL(), Audiences: []string{"valet"}})
	tok := iss.Token(t, nil)

	if _, err := id.Authenticate(context.Background(), tok); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("IdP down: got %v, want broker.ErrUnavailable", err)
	}
	if err := id.Ready(context.Background()); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Ready with the IdP down: %v", err)
	}
	fetches := func() int { return iss.DiscoveryFetches() + iss.JWKSFetches() }
	hits := fetches()
	for range 100 {
		if _, err := id.Authenticate(context.Background(), tok); !errors.Is(err, broker.ErrUnavailable) {
			t.Fatalf("got %v, want broker.ErrUnavailable", err)
		}
	}
	if n := fetches(); n != hits {
		t.Errorf("retried %d times within the refresh interval", n-hits)
	}

	iss.SetDown(false)
	if _, err := id.Authenticate(context.Background(), tok); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("retried before the interval passed: %v", err)
	}
	clock.Advance(31 * time.Second)
	p, err := id.Authenticate(context.Background(), tok)
	if err != nil {
		t.Fatalf("IdP back: %v", err)
	}
	if p.Issuer != "flaky" {
		t.Errorf("issuer %q", p.Issuer)
	}
	if err := id.Ready(context.Background()); err != nil {
		t.Errorf("Ready: %v", err)
	}

	// Going down again does not lose the cached keys.
	iss.SetDown(true)
	clock.Advance(time.Minute)
	if _, err := id.Authenticate(context.Background(), tok); err != nil {
		t.Errorf("cached keys lost while the IdP is down: %v", err)
	}
}

func TestKeysUnavailable(t *testing.T) {
	iss := oidctest.New(t)
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"keys":[`+strings.Repeat(" ", 2<<20)+`]}`)
	}))
	t.Cleanup(huge.Close)
	noKeys := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"keys":[{"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`)
	}))
	t.Cleanup(noKeys.Close)

	for _, tc := range []struct {
		name string
		cfg  IssuerConfig
	}{
		{"discovery names another issuer", IssuerConfig{IssuerURL: iss.URL() + "/"}},
		{"JWKS larger than 1 MiB", IssuerConfig{IssuerURL: iss.URL(), JWKSURL: huge.URL}},
		{"JWKS with only a symmetric key", IssuerConfig{IssuerURL: iss.URL(), JWKSURL: noKeys.URL}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.Name, cfg.Audiences = "x", []string{"valet"}
			id := newTestIdentity(t, testkit.NewClock(time.Now()), cfg)
			_, err := id.Authenticate(context.Background(), iss.Token(t, map[string]any{"iss": cfg.IssuerURL}))
			if !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("got %v, want broker.ErrUnavailable", err)
			}
		})
	}
}

func TestJWKSURLSkipsDiscovery(t *testing.T) {
	iss := oidctest.New(t)
	cfg := devIssuer(iss)
	cfg.JWKSURL = iss.URL() + "/jwks"
	id := newTestIdentity(t, testkit.NewClock(time.Now()), cfg)
	if _, err := id.Authenticate(context.Background(), iss.Token(t, nil, oidctest.WithAlg("ES256"))); err != nil {
		t.Fatal(err)
	}
	if n := iss.DiscoveryFetches(); n != 0 {
		t.Errorf("discovery ran %d times with a JWKS URL configured", n)
	}
}

func TestStaticJWKSNeverFetches(t *testing.T) {
	iss := oidctest.New(t)
	resp, err := http.Get(iss.URL() + "/jwks")
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	before := iss.JWKSFetches()

	clock := testkit.NewClock(time.Now())
	cfg := devIssuer(iss)
	cfg.StaticJWKS = jwks
	id := newTestIdentity(t, clock, cfg)
	if err := id.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := id.Authenticate(context.Background(), iss.Token(t, nil, oidctest.WithAlg("EdDSA"))); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Hour)
	rotated := iss.Token(t, nil, oidctest.WithKID(iss.AddKey("RS256")), oidctest.WithNow(clock.Now()))
	if _, err := id.Authenticate(context.Background(), rotated); err == nil || errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("unknown kid with static keys: got %v, want a rejection", err)
	}
	if n := iss.JWKSFetches() - before; n != 0 || iss.DiscoveryFetches() != 0 {
		t.Errorf("static JWKS caused %d JWKS and %d discovery fetches", n, iss.DiscoveryFetches())
	}
}

// The CVE-2025-30204 / CVE-2025-27144 shape: a megabyte of dots must be
// refused without allocating in proportion to it.
func TestMillionDotsAllocatesLittle(t *testing.T) {
	iss := oidctest.New(t)
	dots := strings.Repeat(".", 1_000_000)
	for _, tc := range []struct {
		name     string
		maxBytes int
	}{
		{"default size limit", 0},
		{"size limit above the token", 2 << 20}, // the shape check alone must hold
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := New(context.Background(), []IssuerConfig{devIssuer(iss)}, Options{
				MaxTokenBytes: tc.maxBytes, Logger: quietLogger(),
			})
			if err != nil {
				t.Fatal(err)
			}
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err = id.Authenticate(context.Background(), dots)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatal("a million dots were accepted")
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Errorf("allocated %d bytes rejecting a million dots", grew)
			}
		})
	}
}

func TestValidateIssuersReportsEverything(t *testing.T) {
	errs := ValidateIssuers([]IssuerConfig{
		{Name: "no-url", Audiences: []string{"valet"}},
		{Name: "no-aud", IssuerURL: "https://idp.example"},
		{Name: "hs", IssuerURL: "https://hs.example", Audiences: []string{"valet"}, Algorithms: []string{"RS256", "HS256", "none"}},
		{Name: "self", IssuerURL: testSelfIssuer + "/", Audiences: []string{"valet"}},
		{Name: "cel", IssuerURL: "https://cel.example", Audiences: []string{"valet"}, Condition: `claims.repo ==`},
		{Name: "cel", IssuerURL: "http://idp.example", Audiences: []string{""}},
		{Name: "both", IssuerURL: "https://both.example", Audiences: []string{"valet"}, JWKSURL: "https://both.example/jwks", StaticJWKS: []byte(`{"keys":[]}`)},
		{Name: "", IssuerURL: "https://idp.example", Audiences: []string{"valet"}, StaticJWKS: []byte(`not json`)},
	}, testSelfIssuer)
	want := []string{
		"issuers[0].issuer_url: is required",
		"issuers[1].audiences:",
		"issuers[2].algorithms[1]:",
		"issuers[2].algorithms[2]:",
		"issuers[3].issuer_url: is Valet's own token issuer",
		"issuers[4].condition:",
		"issuers[5].name:",
		"issuers[5].issuer_url:",
		"issuers[5].audiences[0]:",
		"issuers[6].jwks_url:",
		"issuers[6].static_jwks:",
		"issuers[7].name: is required",
		"issuers[7].issuer_url:",
		"issuers[7].static_jwks:",
	}
	var all []string
	for _, e := range errs {
		all = append(all, e.Error())
	}
	joined := strings.Join(all, "\n")
	for _, w := range want {
		if !strings.Contains(joined, w) {
			t.Errorf("missing %q in:\n%s", w, joined)
		}
	}
	if len(errs) != len(want) {
		t.Errorf("%d errors, want %d:\n%s", len(errs), len(want), joined)
	}
	if errs := ValidateIssuers(nil, ""); len(errs) != 1 {
		t.Errorf("no issuers: %v", errs)
	}
}

func TestNewIdentityRejectsBadConfig(t *testing.T) {
	ok := []IssuerConfig{{Name: "dev", IssuerURL: "https://idp.example", Audiences: []string{"valet"}, StaticJWKS: []byte(`{"keys":[]}`)}}
	for _, tc := range []struct {
		name string
		cfgs []IssuerConfig
		opts Options
		want string
	}{
		{"leeway above 60s", ok, Options{Leeway: 61 * time.Second}, "leeway"},
		{"negative leeway", ok, Options{Leeway: -time.Second}, "leeway"},
		{"self issuer trusted", []IssuerConfig{{Name: "me", IssuerURL: testSelfIssuer, Audiences: []string{"valet"}}},
			Options{SelfIssuer: testSelfIssuer}, "own token issuer"},
		{"static JWKS with no usable key", ok, Options{}, "no usable signing key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Logger = quietLogger()
			_, err := New(context.Background(), tc.cfgs, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error about %q", err, tc.want)
			}
		})
	}
}

func TestIssuersAppliesDefaults(t *testing.T) {
	iss := oidctest.New(t)
	id := newTestIdentity(t, testkit.NewClock(time.Now()), devIssuer(iss))
	got := id.Issuers()[0]
	if got.SubjectClaim != "sub" || strings.Join(got.Algorithms, ",") != "RS256,ES256,EdDSA" {
		t.Errorf("defaults not applied: %+v", got)
	}
	got.Audiences[0] = "mutated"
	if id.Issuers()[0].Audiences[0] != "valet" {
		t.Error("Issuers() exposes internal state")
	}
}
