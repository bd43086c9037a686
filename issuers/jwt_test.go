package issuers

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
)

const testIssuer = "https://valet.example.com"

var (
	t0   = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	algs = []string{AlgEdDSA, AlgES256}
)

func newKey(t testing.TB, alg string) crypto.Signer {
	t.Helper()
	k, err := GenerateSigningKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func methodFor(alg string) jwt.SigningMethod {
	if alg == AlgES256 {
		return jwt.SigningMethodES256
	}
	return jwt.SigningMethodEdDSA
}

func newIssuer(t testing.TB, cfg JWTConfig, now func() time.Time) *JWT {
	t.Helper()
	if cfg.Issuer == "" {
		cfg.Issuer = testIssuer
	}
	j, err := NewJWT(cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func testTask(now time.Time) broker.Task {
	return broker.Task{
		ID:        "task-123",
		State:     broker.StateActive,
		Agent:     "agent-7",
		Issuer:    "corp-idp",
		Template:  "deploy-preview",
		Intent:    "deploy the preview",
		Tools:     []string{"github.read", "vercel.deploy"},
		CreatedAt: now,
		Deadline:  now.Add(15 * time.Minute),
	}
}

var (
	testPrincipal = broker.Principal{Issuer: "corp-idp", IssuerURL: "https://idp.example.com", Subject: "agent-7"}
	testGrant     = broker.Grant{
		Tools:     []string{"github.read", "vercel.deploy"},
		TTL:       15 * time.Minute,
		Audiences: []string{"https://api.github.com", "https://vercel.com"},
		Scopes:    []string{"repo:read", "deploy"},
	}
)

func mintOne(t testing.TB, j *JWT, task broker.Task, g broker.Grant) (broker.Minted, string) {
	t.Helper()
	ms, err := j.Mint(context.Background(), task, testPrincipal, g)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 {
		t.Fatalf("Mint returned %d credentials, want 1", len(ms))
	}
	tok, ok := ms[0].Material["access_token"].(string)
	if !ok {
		t.Fatalf("access_token is %T", ms[0].Material["access_token"])
	}
	return ms[0], tok
}

// segments decodes a compact JWS into its header and payload as generic JSON
// and its raw signature.
func segments(t testing.TB, tok string) (header, payload map[string]any, sig []byte) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	dec := func(s string, v any) {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		if v != nil {
			if err := json.Unmarshal(b, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	dec(parts[0], &header)
	dec(parts[1], &payload)
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	return header, payload, sig
}

func enc(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// craft signs any header and payload with key, so tests can build tokens Mint
// would never make. ES256 signatures are put in low-S form, as Mint does.
func craft(t testing.TB, m jwt.SigningMethod, key any, header, payload map[string]any) string {
	t.Helper()
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	p, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	signing := enc(h) + "." + enc(p)
	sig, err := m.Sign(signing, key)
	if err != nil {
		t.Fatal(err)
	}
	if m == jwt.SigningMethodES256 {
		lowS(sig)
	}
	return signing + "." + enc(sig)
}

func TestMintVerifyRoundTrip(t *testing.T) {
	for _, alg := range algs {
		t.Run(alg, func(t *testing.T) {
			now := t0.Add(1234 * time.Millisecond) // sub-second part is dropped from iat
			key := newKey(t, alg)
			j := newIssuer(t, JWTConfig{Algorithm: alg, Keys: []SigningKey{{KID: "k1", Private: key}}, ActiveKID: "k1"}, func() time.Time { return now })
			task := testTask(t0)
			m, tok := mintOne(t, j, task, testGrant)

			header, payload, _ := segments(t, tok)
			wantHeader := map[string]any{"alg": alg, "kid": "k1", "typ": "at+jwt"}
			if !reflect.DeepEqual(header, wantHeader) {
				t.Errorf("header = %v, want %v", header, wantHeader)
			}

			jti, _ := payload["jti"].(string)
			if raw, err := base64.RawURLEncoding.DecodeString(jti); err != nil || len(raw) != 16 {
				t.Errorf("jti %q is not 128 bits of base64url (err %v)", jti, err)
			}
			wantPayload := map[string]any{
				"iss":          testIssuer,
				"sub":          "agent-7",
				"aud":          []any{"https://api.github.com", "https://vercel.com"},
				"exp":          float64(task.Deadline.Unix()),
				"iat":          float64(t0.Unix() + 1),
				"nbf":          float64(t0.Unix() + 1),
				"jti":          jti,
				"client_id":    "agent-7",
				"scope":        "repo:read deploy",
				"task_id":      "task-123",
				"template":     "deploy-preview",
				"tools":        []any{"github.read", "vercel.deploy"},
				"agent_issuer": "corp-idp",
			}
			if !reflect.DeepEqual(payload, wantPayload) {
				t.Errorf("payload =\n%v\nwant\n%v", payload, wantPayload)
			}

			wantMinted := broker.Minted{
				Credential: broker.Credential{ID: jti, Kind: broker.KindJWT, TaskID: "task-123", IssuedAt: now, ExpiresAt: task.Deadline},
				Material: map[string]any{
					"type": "jwt", "access_token": tok, "token_type": "Bearer",
					"expires_at": task.Deadline.Format(time.RFC3339),
				},
			}
			if !reflect.DeepEqual(m, wantMinted) {
				t.Errorf("Minted =\n%+v\nwant\n%+v", m, wantMinted)
			}

			got, err := j.Verify(tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := broker.TaskClaims{
				ID: jti, TaskID: "task-123", Subject: "agent-7", Template: "deploy-preview",
				Tools: testGrant.Tools, Audience: testGrant.Audiences, Scope: "repo:read deploy",
				ClientID: "agent-7", IssuedAt: t0.Add(time.Second), ExpiresAt: task.Deadline,
				AgentIssuer: "corp-idp",
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Verify =\n%+v\nwant\n%+v", got, want)
			}

			_, tok2 := mintOne(t, j, task, testGrant)
			if _, p2, _ := segments(t, tok2); p2["jti"] == jti {
				t.Error("two mints share a jti")
			}
		})
	}
}

func TestMintShape(t *testing.T) {
	now := t0
	j := newIssuer(t, JWTConfig{Keys: []SigningKey{{Private: newKey(t, AlgEdDSA)}}}, func() time.Time { return now })
	task := testTask(t0)
	task.Deadline = t0.Add(90*time.Second + 700*time.Millisecond)

	tests := []struct {
		name  string
		grant broker.Grant
		check func(t *testing.T, payload map[string]any, m broker.Minted)
	}{
		{"no scopes omits scope", broker.Grant{Audiences: []string{"a"}, Tools: []string{"x"}}, func(t *testing.T, p map[string]any, _ broker.Minted) {
			if _, ok := p["scope"]; ok {
				t.Errorf("scope = %v, want absent", p["scope"])
			}
		}},
		{"no tools is an empty array", broker.Grant{Audiences: []string{"a"}}, func(t *testing.T, p map[string]any, _ broker.Minted) {
			if v, ok := p["tools"].([]any); !ok || len(v) != 0 {
				t.Errorf("tools = %#v, want []", p["tools"])
			}
		}},
		{"one audience is still an array", broker.Grant{Audiences: []string{"a"}}, func(t *testing.T, p map[string]any, _ broker.Minted) {
			if !reflect.DeepEqual(p["aud"], []any{"a"}) {
				t.Errorf("aud = %#v, want [\"a\"]", p["aud"])
			}
		}},
		{"sub-second deadline rounds exp down, never up", broker.Grant{Audiences: []string{"a"}}, func(t *testing.T, p map[string]any, m broker.Minted) {
			want := t0.Add(90 * time.Second)
			if p["exp"] != float64(want.Unix()) || !m.ExpiresAt.Equal(want) {
				t.Errorf("exp = %v, ExpiresAt = %v, want %v", p["exp"], m.ExpiresAt, want)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, tok := mintOne(t, j, task, tt.grant)
			_, payload, _ := segments(t, tok)
			tt.check(t, payload, m)
			if _, err := j.Verify(tok); err != nil {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

func TestMintRefuses(t *testing.T) {
	now := t0
	j := newIssuer(t, JWTConfig{Keys: []SigningKey{{Private: newKey(t, AlgEdDSA)}}}, func() time.Time { return now })
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name   string
		ctx    context.Context
		mutate func(*broker.Task, *broker.Grant)
	}{
		{"deadline passed", nil, func(tk *broker.Task, _ *broker.Grant) { tk.Deadline = t0.Add(-time.Second) }},
		{"deadline is now", nil, func(tk *broker.Task, _ *broker.Grant) { tk.Deadline = t0 }},
		{"deadline under a second away", nil, func(tk *broker.Task, _ *broker.Grant) { tk.Deadline = t0.Add(999 * time.Millisecond) }},
		{"no task id", nil, func(tk *broker.Task, _ *broker.Grant) { tk.ID = "" }},
		{"no agent", nil, func(tk *broker.Task, _ *broker.Grant) { tk.Agent = "" }},
		{"no audience", nil, func(_ *broker.Task, g *broker.Grant) { g.Audiences = nil }},
		{"empty audience", nil, func(_ *broker.Task, g *broker.Grant) { g.Audiences = []string{"a", ""} }},
		{"context cancelled", cancelled, func(*broker.Task, *broker.Grant) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			task, g := testTask(t0), testGrant
			g.Audiences = slices.Clone(g.Audiences)
			tt.mutate(&task, &g)
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			ms, err := j.Mint(ctx, task, testPrincipal, g)
			if err == nil || ms != nil {
				t.Fatalf("Mint = %v, %v; want nil and an error", ms, err)
			}
		})
	}
}

func TestRotation(t *testing.T) {
	for _, alg := range algs {
		t.Run(alg, func(t *testing.T) {
			now := func() time.Time { return t0 }
			k1, k2 := newKey(t, alg), newKey(t, alg)

			before := newIssuer(t, JWTConfig{Algorithm: alg, Keys: []SigningKey{{KID: "k1", Private: k1}}, ActiveKID: "k1"}, now)
			_, old := mintOne(t, before, testTask(t0), testGrant)

			// k2 signs now; k1 stays published (public half only) until its
			// tokens have expired.
			during := newIssuer(t, JWTConfig{Algorithm: alg, Keys: []SigningKey{{KID: "k1", Public: k1.Public()}, {KID: "k2", Private: k2}}, ActiveKID: "k2"}, now)
			_, fresh := mintOne(t, during, testTask(t0), testGrant)
			if h, _, _ := segments(t, fresh); h["kid"] != "k2" {
				t.Errorf("new token kid = %v, want k2", h["kid"])
			}
			for name, tok := range map[string]string{"old": old, "new": fresh} {
				if _, err := during.Verify(tok); err != nil {
					t.Errorf("%s token under rotated config: %v", name, err)
				}
			}
			var set jose.JSONWebKeySet
			if err := json.Unmarshal(during.JWKS(), &set); err != nil {
				t.Fatal(err)
			}
			if len(set.Key("k1")) != 1 || len(set.Key("k2")) != 1 || len(set.Keys) != 2 {
				t.Errorf("JWKS kids = %v, want k1 and k2", set.Keys)
			}

			after := newIssuer(t, JWTConfig{Algorithm: alg, Keys: []SigningKey{{KID: "k2", Private: k2}}}, now)
			if _, err := after.Verify(old); !errors.Is(err, ErrInvalidToken) {
				t.Errorf("token of a removed key: err = %v, want ErrInvalidToken", err)
			}
			if _, err := after.Verify(fresh); err != nil {
				t.Errorf("token of the kept key: %v", err)
			}
		})
	}
}

func TestJWKS(t *testing.T) {
	for _, alg := range algs {
		t.Run(alg, func(t *testing.T) {
			k1, k2 := newKey(t, alg), newKey(t, alg)
			j := newIssuer(t, JWTConfig{Algorithm: alg, Keys: []SigningKey{{Private: k1}, {KID: "next", Public: k2.Public()}}}, time.Now)
			var set jose.JSONWebKeySet
			if err := json.Unmarshal(j.JWKS(), &set); err != nil {
				t.Fatal(err)
			}
			kid1, err := KeyID(k1.Public())
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]crypto.PublicKey{kid1: k1.Public(), "next": k2.Public()}
			if len(set.Keys) != len(want) {
				t.Fatalf("JWKS has %d keys, want %d", len(set.Keys), len(want))
			}
			for _, k := range set.Keys {
				pub, ok := want[k.KeyID]
				switch {
				case !ok:
					t.Errorf("unexpected kid %q", k.KeyID)
				case k.Algorithm != alg || k.Use != "sig" || !k.IsPublic():
					t.Errorf("kid %q: alg %q use %q public %v", k.KeyID, k.Algorithm, k.Use, k.IsPublic())
				case !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Key):
					t.Errorf("kid %q: key differs", k.KeyID)
				}
			}
			if got := j.Algorithms(); !reflect.DeepEqual(got, []string{alg}) {
				t.Errorf("Algorithms = %v", got)
			}
			b := j.JWKS()
			b[0] = 'X'
			if j.JWKS()[0] == 'X' {
				t.Error("JWKS hands out its own buffer")
			}
		})
	}
}

func TestKindAndRevoke(t *testing.T) {
	j := newIssuer(t, JWTConfig{Keys: []SigningKey{{Private: newKey(t, AlgEdDSA)}}}, time.Now)
	if j.Kind() != broker.KindJWT {
		t.Errorf("Kind = %q", j.Kind())
	}
	if err := j.Revoke(context.Background(), broker.Credential{ID: "x", Kind: broker.KindJWT}); err != nil {
		t.Errorf("Revoke = %v, want nil", err)
	}
}

func TestVerifyRejects(t *testing.T) {
	for _, alg := range algs {
		t.Run(alg, func(t *testing.T) {
			clk := testkit.NewClock(t0)
			key := newKey(t, alg)
			m := methodFor(alg)
			j := newIssuer(t, JWTConfig{Algorithm: alg, Keys: []SigningKey{{KID: "k1", Private: key}}}, clk.Now)
			task := testTask(t0)
			_, good := mintOne(t, j, task, testGrant)
			header, payload, sig := segments(t, good)
			parts := strings.Split(good, ".")

			// with returns a copy of a map with key k set to v, or deleted
			// when v is nil.
			with := func(src map[string]any, k string, v any) map[string]any {
				out := make(map[string]any, len(src))
				for kk, vv := range src {
					out[kk] = vv
				}
				if v == nil {
					delete(out, k)
				} else {
					out[k] = v
				}
				return out
			}
			// Control: craft reproduces a token that verifies, so each case
			// below fails because of its one change.
			if _, err := j.Verify(craft(t, m, key, header, payload)); err != nil {
				t.Fatalf("crafted control token: %v", err)
			}

			foreign := newKey(t, alg)
			otherIss := newIssuer(t, JWTConfig{Issuer: "https://evil.example.com", Algorithm: alg, Keys: []SigningKey{{KID: "k1", Private: key}}}, clk.Now)
			_, wrongIss := mintOne(t, otherIss, task, testGrant)
			pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
			if err != nil {
				t.Fatal(err)
			}
			pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
			flip := func(b []byte, i int) []byte { b = slices.Clone(b); b[i] ^= 0x01; return b }
			hs := func(secret []byte) string {
				return craft(t, jwt.SigningMethodHS256, secret, with(header, "alg", "HS256"), payload)
			}
			otherAlg := AlgES256
			if alg == AlgES256 {
				otherAlg = AlgEdDSA
			}
			foreignJWK := jose.JSONWebKey{Key: foreign.Public(), KeyID: "k1", Algorithm: alg, Use: "sig"}

			tests := []struct {
				name  string
				token func() string
				clock time.Time // zero: t0
			}{
				{"empty", func() string { return "" }, time.Time{}},
				{"garbage", func() string { return "not a token" }, time.Time{}},
				{"two segments", func() string { return parts[0] + "." + parts[1] }, time.Time{}},
				{"four segments", func() string { return good + "." + parts[2] }, time.Time{}},
				{"bit-flipped signature", func() string { return parts[0] + "." + parts[1] + "." + enc(flip(sig, 10)) }, time.Time{}},
				{"bit-flipped payload", func() string {
					p, _ := base64.RawURLEncoding.DecodeString(parts[1])
					return parts[0] + "." + enc(flip(p, 20)) + "." + parts[2]
				}, time.Time{}},
				{"stripped signature", func() string { return parts[0] + "." + parts[1] + "." }, time.Time{}},
				{"non-canonical base64 signature", func() string {
					return parts[0] + "." + parts[1] + "." + nonCanonical(parts[2])
				}, time.Time{}},
				{"alg none", func() string {
					h, _ := json.Marshal(with(header, "alg", "none"))
					return enc(h) + "." + parts[1] + "."
				}, time.Time{}},
				{"alg HS256 keyed with raw public key", func() string {
					var raw []byte
					switch pub := key.Public().(type) {
					case ed25519.PublicKey:
						raw = pub
					case *ecdsa.PublicKey:
						raw, _ = pub.Bytes()
					}
					return hs(raw)
				}, time.Time{}},
				{"alg HS256 keyed with public key PEM", func() string { return hs(pubPEM) }, time.Time{}},
				{"alg HS256 keyed with JWKS", func() string { return hs(j.JWKS()) }, time.Time{}},
				{"other algorithm with known kid", func() string {
					return craft(t, methodFor(otherAlg), newKey(t, otherAlg), with(header, "alg", otherAlg), payload)
				}, time.Time{}},
				{"wrong issuer", func() string { return wrongIss }, time.Time{}},
				{"expired", func() string { return good }, task.Deadline.Add(time.Second)},
				{"at exp exactly", func() string { return good }, task.Deadline},
				{"expired and forged", func() string { return parts[0] + "." + parts[1] + "." + enc(flip(sig, 3)) }, task.Deadline.Add(time.Hour)},
				{"issued in the future", func() string { return good }, t0.Add(-time.Minute)},
				{"nbf in the future", func() string {
					return craft(t, m, key, header, with(with(payload, "nbf", float64(t0.Add(time.Minute).Unix())), "iat", float64(t0.Add(-time.Minute).Unix())))
				}, time.Time{}},
				{"typ missing", func() string { return craft(t, m, key, with(header, "typ", nil), payload) }, time.Time{}},
				{"typ JWT", func() string { return craft(t, m, key, with(header, "typ", "JWT"), payload) }, time.Time{}},
				{"typ AT+JWT", func() string { return craft(t, m, key, with(header, "typ", "AT+JWT"), payload) }, time.Time{}},
				{"crit header", func() string { return craft(t, m, key, with(header, "crit", []string{"exp"}), payload) }, time.Time{}},
				{"kid missing", func() string { return craft(t, m, key, with(header, "kid", nil), payload) }, time.Time{}},
				{"kid unknown", func() string { return craft(t, m, key, with(header, "kid", "k9"), payload) }, time.Time{}},
				{"kid not a string", func() string { return craft(t, m, key, with(header, "kid", 1), payload) }, time.Time{}},
				{"foreign key with known kid", func() string { return craft(t, m, foreign, header, payload) }, time.Time{}},
				{"foreign key in jwk and jku headers", func() string {
					h := with(with(header, "jwk", foreignJWK), "jku", "https://evil.example.com/jwks")
					return craft(t, m, foreign, h, payload)
				}, time.Time{}},
				{"huge token with a valid signature", func() string {
					return craft(t, m, key, header, with(payload, "pad", strings.Repeat("A", DefaultMaxTokenBytes)))
				}, time.Time{}},
				{"missing jti", func() string { return craft(t, m, key, header, with(payload, "jti", nil)) }, time.Time{}},
				{"empty jti", func() string { return craft(t, m, key, header, with(payload, "jti", "")) }, time.Time{}},
				{"missing task_id", func() string { return craft(t, m, key, header, with(payload, "task_id", nil)) }, time.Time{}},
				{"missing sub", func() string { return craft(t, m, key, header, with(payload, "sub", nil)) }, time.Time{}},
				{"missing exp", func() string { return craft(t, m, key, header, with(payload, "exp", nil)) }, time.Time{}},
				{"missing iat", func() string { return craft(t, m, key, header, with(payload, "iat", nil)) }, time.Time{}},
				{"missing aud", func() string { return craft(t, m, key, header, with(payload, "aud", nil)) }, time.Time{}},
				{"empty aud array", func() string { return craft(t, m, key, header, with(payload, "aud", []string{})) }, time.Time{}},
				{"empty aud string", func() string { return craft(t, m, key, header, with(payload, "aud", "")) }, time.Time{}},
				{"numeric aud", func() string { return craft(t, m, key, header, with(payload, "aud", 1)) }, time.Time{}},
				{"tools not an array", func() string { return craft(t, m, key, header, with(payload, "tools", "github.read")) }, time.Time{}},
				{"exp as string", func() string {
					return craft(t, m, key, header, with(payload, "exp", "2099-01-01"))
				}, time.Time{}},
			}
			if alg == AlgES256 {
				tests = append(tests, struct {
					name  string
					token func() string
					clock time.Time
				}{"high-S twin of a valid signature", func() string {
					s := new(big.Int).SetBytes(sig[32:])
					twin := slices.Clone(sig)
					new(big.Int).Sub(elliptic.P256().Params().N, s).FillBytes(twin[32:])
					if !ecdsa.Verify(key.Public().(*ecdsa.PublicKey), sha256Sum(parts[0]+"."+parts[1]), new(big.Int).SetBytes(twin[:32]), new(big.Int).SetBytes(twin[32:])) {
						t.Fatal("high-S twin does not verify as plain ECDSA; the case tests nothing")
					}
					return parts[0] + "." + parts[1] + "." + enc(twin)
				}, time.Time{}})
			}

			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					at := tt.clock
					if at.IsZero() {
						at = t0
					}
					clk.Set(at)
					defer clk.Set(t0)
					got, err := j.Verify(tt.token())
					if !errors.Is(err, ErrInvalidToken) {
						t.Fatalf("Verify err = %v, want ErrInvalidToken", err)
					}
					t.Log(err)
					if !reflect.DeepEqual(got, broker.TaskClaims{}) {
						t.Errorf("Verify returned claims %+v alongside an error", got)
					}
				})
			}
			// The good token still verifies: the cases above changed nothing.
			if _, err := j.Verify(good); err != nil {
				t.Errorf("good token: %v", err)
			}
		})
	}
}

// TestVerifyDotsMemory is the regression test for CVE-2025-30204: a long run
// of dots must be refused without allocating in proportion to it, both at the
// length cap and, with the cap lifted, inside the parser.
func TestVerifyDotsMemory(t *testing.T) {
	dots := strings.Repeat(".", 1<<20)
	for _, tt := range []struct {
		name     string
		maxBytes int
	}{
		{"default cap", 0},
		{"cap above the input", 4 << 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j := newIssuer(t, JWTConfig{Keys: []SigningKey{{Private: newKey(t, AlgEdDSA)}}, MaxTokenBytes: tt.maxBytes}, func() time.Time { return t0 })
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err := j.Verify(dots)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("Verify err = %v, want ErrInvalidToken", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Errorf("Verify allocated %d bytes for a million dots, want <= 1 MiB", grew)
			}
		})
	}
}

func TestVerifyConcurrent(t *testing.T) {
	for _, alg := range algs {
		t.Run(alg, func(t *testing.T) {
			j := newIssuer(t, JWTConfig{Algorithm: alg, Keys: []SigningKey{{Private: newKey(t, alg)}}}, func() time.Time { return t0 })
			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for range 8 {
				wg.Go(func() {
					for range 20 {
						ms, err := j.Mint(context.Background(), testTask(t0), testPrincipal, testGrant)
						if err != nil {
							errs <- err
							return
						}
						if _, err := j.Verify(ms[0].Material["access_token"].(string)); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLoadSigningKeyPEM(t *testing.T) {
	tests := []struct {
		file    string
		data    []byte // used when file is empty
		wantAlg string // empty: an error is expected
		wantErr string // substring of the error
	}{
		{file: "ed25519-pkcs8.pem", wantAlg: AlgEdDSA},
		{file: "p256-pkcs8.pem", wantAlg: AlgES256},
		{file: "p256-sec1.pem", wantAlg: AlgES256},
		{file: "rsa-pkcs8.pem", wantErr: "RSA"},
		{file: "rsa-pkcs1.pem", wantErr: "RSA"},
		{file: "p384-pkcs8.pem", wantErr: "P-384"},
		{file: "ed25519-encrypted.pem", wantErr: "encrypted"},
		{file: "p256-sec1-encrypted.pem", wantErr: "encrypted"},
		{file: "ed25519-public.pem", wantErr: "PUBLIC KEY"},
		{data: []byte("garbage, not PEM at all"), wantErr: "no PEM private key"},
		{data: nil, wantErr: "no PEM private key"},
		{data: []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), wantErr: "PKCS#8"},
	}
	for _, tt := range tests {
		name := tt.file
		if name == "" {
			name = string(tt.data)
			if name == "" {
				name = "empty"
			}
		}
		t.Run(name, func(t *testing.T) {
			data := tt.data
			if tt.file != "" {
				data = readFixture(t, tt.file)
			}
			k, err := LoadSigningKeyPEM(data)
			if tt.wantAlg == "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadSigningKeyPEM = %T, %v; want an error mentioning %q", k, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// The key works: it configures an issuer whose tokens verify.
			j := newIssuer(t, JWTConfig{Algorithm: tt.wantAlg, Keys: []SigningKey{{Private: k}}}, func() time.Time { return t0 })
			if _, tok := mintOne(t, j, testTask(t0), testGrant); tok != "" {
				if _, err := j.Verify(tok); err != nil {
					t.Errorf("Verify: %v", err)
				}
			}
		})
	}

	t.Run("two keys in one file", func(t *testing.T) {
		data := append(readFixture(t, "ed25519-pkcs8.pem"), readFixture(t, "p256-pkcs8.pem")...)
		if _, err := LoadSigningKeyPEM(data); err == nil || !strings.Contains(err.Error(), "more than one key") {
			t.Errorf("err = %v, want one about more than one key", err)
		}
	})
}

func TestGenerateAndEncodeSigningKey(t *testing.T) {
	for _, alg := range []string{"", AlgEdDSA, AlgES256} {
		t.Run("alg="+alg, func(t *testing.T) {
			k := newKey(t, alg)
			data, err := EncodeSigningKeyPEM(k)
			if err != nil {
				t.Fatal(err)
			}
			back, err := LoadSigningKeyPEM(data)
			if err != nil {
				t.Fatal(err)
			}
			if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.Public()) {
				t.Error("key changed on the PEM round trip")
			}
		})
	}
	if _, err := GenerateSigningKey("RS256"); err == nil {
		t.Error("GenerateSigningKey(RS256) succeeded")
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EncodeSigningKeyPEM(p384); err == nil {
		t.Error("EncodeSigningKeyPEM(P-384) succeeded")
	}
}

// TestKeyID checks the thumbprint against RFC 8037 appendix A.3.
func TestKeyID(t *testing.T) {
	x, err := base64.RawURLEncoding.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	if err != nil {
		t.Fatal(err)
	}
	got, err := KeyID(ed25519.PublicKey(x))
	if err != nil {
		t.Fatal(err)
	}
	if want := "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"; got != want {
		t.Errorf("KeyID = %q, want %q", got, want)
	}
	if _, err := KeyID(nil); err == nil {
		t.Error("KeyID(nil) succeeded")
	}
}

func TestNewJWTValidation(t *testing.T) {
	ed, ed2, ec := newKey(t, AlgEdDSA), newKey(t, AlgEdDSA), newKey(t, AlgES256)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), nil)
	if err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return t0 }

	tests := []struct {
		name string
		cfg  JWTConfig
		now  func() time.Time
		want []string // substrings, all of which must appear; none: valid
	}{
		{"defaults", JWTConfig{Issuer: testIssuer, Keys: []SigningKey{{Private: ed}}}, now, nil},
		{"http issuer for dev", JWTConfig{Issuer: "http://127.0.0.1:8080", Keys: []SigningKey{{Private: ed}}}, now, nil},
		{"many problems at once", JWTConfig{
			Issuer:        "valet.example.com",
			Algorithm:     "RS256",
			Keys:          []SigningKey{{KID: "a", Private: ed}, {KID: "a", Private: ed2}},
			ActiveKID:     "missing",
			MaxTokenBytes: -1,
		}, nil, []string{"now cannot be nil", "absolute http(s) URL", `"RS256" is not supported`, `kid "a" is used by more than one key`, `active kid "missing" is not among`, "must not be negative"}},
		{"issuer with query", JWTConfig{Issuer: testIssuer + "?x=1", Keys: []SigningKey{{Private: ed}}}, now, []string{"query or fragment"}},
		{"issuer with fragment", JWTConfig{Issuer: testIssuer + "#f", Keys: []SigningKey{{Private: ed}}}, now, []string{"query or fragment"}},
		{"issuer without host", JWTConfig{Issuer: "https:///path", Keys: []SigningKey{{Private: ed}}}, now, []string{"no host"}},
		{"no issuer", JWTConfig{Keys: []SigningKey{{Private: ed}}}, now, []string{"issuer URL is required"}},
		{"no keys", JWTConfig{Issuer: testIssuer}, now, []string{"no signing keys", "no key has a private key"}},
		{"EdDSA with a P-256 key", JWTConfig{Issuer: testIssuer, Keys: []SigningKey{{KID: "a", Private: ec}}}, now, []string{"needs an Ed25519 key"}},
		{"ES256 with an Ed25519 and a P-384 key", JWTConfig{Issuer: testIssuer, Algorithm: AlgES256, Keys: []SigningKey{{KID: "a", Private: ed}, {KID: "b", Public: p384.Public()}}, ActiveKID: "a"}, now, []string{"keys[0]: ES256 needs an ECDSA P-256 key", "keys[1]: ES256 needs an ECDSA P-256 key, got ECDSA P-384"}},
		{"active key published only", JWTConfig{Issuer: testIssuer, Keys: []SigningKey{{KID: "a", Public: ed.Public()}}, ActiveKID: "a"}, now, []string{`active kid "a" has no private key`}},
		{"two signers, no active kid", JWTConfig{Issuer: testIssuer, Keys: []SigningKey{{Private: ed}, {Private: ed2}}}, now, []string{"active kid must be set"}},
		{"public does not match private", JWTConfig{Issuer: testIssuer, Keys: []SigningKey{{Private: ed, Public: ed2.Public()}}}, now, []string{"does not match"}},
		{"empty key", JWTConfig{Issuer: testIssuer, Keys: []SigningKey{{Private: ed}, {KID: "x"}}}, now, []string{"keys[1]: neither"}},
		{"same key twice under default kids", JWTConfig{Issuer: testIssuer, Keys: []SigningKey{{Private: ed}, {Public: ed.Public()}}}, now, []string{"used by more than one key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := NewJWT(tt.cfg, tt.now)
			if len(tt.want) == 0 {
				if err != nil || j == nil {
					t.Fatalf("NewJWT = %v, %v", j, err)
				}
				return
			}
			if err == nil || j != nil {
				t.Fatalf("NewJWT = %v, %v; want nil and an error", j, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not mention %q", err, w)
				}
			}
		})
	}
}

func sha256Sum(s string) []byte {
	h := crypto.SHA256.New()
	h.Write([]byte(s))
	return h.Sum(nil)
}

func BenchmarkMint(b *testing.B) {
	for _, alg := range algs {
		b.Run(alg, func(b *testing.B) {
			j := newIssuer(b, JWTConfig{Algorithm: alg, Keys: []SigningKey{{Private: newKey(b, alg)}}}, time.Now)
			task := testTask(time.Now())
			task.Deadline = time.Now().Add(time.Hour)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := j.Mint(context.Background(), task, testPrincipal, testGrant); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	for _, alg := range algs {
		b.Run(alg, func(b *testing.B) {
			j := newIssuer(b, JWTConfig{Algorithm: alg, Keys: []SigningKey{{Private: newKey(b, alg)}}}, time.Now)
			task := testTask(time.Now())
			task.Deadline = time.Now().Add(time.Hour)
			_, tok := mintOne(b, j, task, testGrant)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := j.Verify(tok); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
