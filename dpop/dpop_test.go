package dpop_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/dpop"
)

const (
	reqURL = "https://tools.example.com/tickets/1"
	token  = "the.access.token"
)

var now = time.Unix(1_800_000_000, 0)

// forge signs a compact JWS over header and claims with key (Ed25519), so
// tests can build proofs no Signer would make.
func forge(t *testing.T, key ed25519.PrivateKey, header, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	input := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	return input + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(input)))
}

func publicJWK(t *testing.T, k any) map[string]any {
	t.Helper()
	b, err := json.Marshal(jose.JSONWebKey{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

// TestCheck covers the RFC 9449 section 4.3 checks one by one: every
// proof but the valid ones must be refused with ErrInvalidProof.
func TestCheck(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	header := func() map[string]any {
		return map[string]any{"typ": "dpop+jwt", "alg": "EdDSA", "jwk": publicJWK(t, pub)}
	}
	claims := func() map[string]any {
		return map[string]any{"jti": "j1", "htm": "POST", "htu": reqURL, "iat": now.Unix(), "ath": dpop.ATH(token)}
	}
	with := func(m map[string]any, k string, v any) map[string]any {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	privJWK := func() map[string]any {
		b, _ := json.Marshal(jose.JSONWebKey{Key: priv})
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return m
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	es512, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES512, Key: ecKey}, (&jose.SignerOptions{EmbedJWK: true}).WithType(dpop.HeaderType))
	es512Proof := func() string {
		c, _ := json.Marshal(claims())
		o, err := es512.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := o.CompactSerialize()
		return s
	}
	edSigner, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: priv}, (&jose.SignerOptions{EmbedJWK: true}).WithType(dpop.HeaderType))
	jsonSerialized := func() string {
		c, _ := json.Marshal(claims())
		o, err := edSigner.Sign(c)
		if err != nil {
			t.Fatal(err)
		}
		return o.FullSerialize()
	}
	valid := forge(t, priv, header(), claims())
	for _, tc := range []struct {
		name   string
		proof  string
		method string
		url    string
		token  string
		ok     bool
	}{
		{"valid", valid, "POST", reqURL, token, true},
		{"valid, htu compared without query", valid, "POST", reqURL + "?page=2", token, true},
		{"valid, no token and no ath", forge(t, priv, header(), with(claims(), "ath", nil)), "POST", reqURL, "", true},
		{"JSON serialization refused", jsonSerialized(), "POST", reqURL, token, false},
		{"typ JWT", forge(t, priv, with(header(), "typ", "JWT"), claims()), "POST", reqURL, token, false},
		{"typ absent", forge(t, priv, with(header(), "typ", nil), claims()), "POST", reqURL, token, false},
		{"alg none", strings.Join(strings.Split(forge(t, priv, with(header(), "alg", "none"), claims()), ".")[:2], ".") + ".", "POST", reqURL, token, false},
		{"alg HS256", forge(t, priv, with(header(), "alg", "HS256"), claims()), "POST", reqURL, token, false},
		{"alg ES512 not on the allow-list", es512Proof(), "POST", reqURL, token, false},
		{"no jwk", forge(t, priv, with(header(), "jwk", nil), claims()), "POST", reqURL, token, false},
		{"private jwk", forge(t, priv, with(header(), "jwk", privJWK()), claims()), "POST", reqURL, token, false},
		{"signed by another key than the jwk", forge(t, other, header(), claims()), "POST", reqURL, token, false},
		{"htm mismatch", valid, "GET", reqURL, token, false},
		{"htm lower case", forge(t, priv, header(), with(claims(), "htm", "post")), "POST", reqURL, token, false},
		{"htu other path", valid, "POST", "https://tools.example.com/tickets/2", token, false},
		{"htu other host", valid, "POST", "https://evil.example.com/tickets/1", token, false},
		{"htu relative", forge(t, priv, header(), with(claims(), "htu", "/tickets/1")), "POST", reqURL, token, false},
		{"iat too old", forge(t, priv, header(), with(claims(), "iat", now.Add(-dpop.Window-time.Second).Unix())), "POST", reqURL, token, false},
		{"iat in the future", forge(t, priv, header(), with(claims(), "iat", now.Add(dpop.Window+time.Second).Unix())), "POST", reqURL, token, false},
		{"iat missing", forge(t, priv, header(), with(claims(), "iat", nil)), "POST", reqURL, token, false},
		{"jti missing", forge(t, priv, header(), with(claims(), "jti", nil)), "POST", reqURL, token, false},
		{"jti too long", forge(t, priv, header(), with(claims(), "jti", strings.Repeat("j", 257))), "POST", reqURL, token, false},
		{"ath missing for a bound token", forge(t, priv, header(), with(claims(), "ath", nil)), "POST", reqURL, token, false},
		{"ath of another token", valid, "POST", reqURL, "another.access.token", false},
		{"ath with no token", valid, "POST", reqURL, "", false},
		{"empty", "", "POST", reqURL, token, false},
		{"oversized", strings.Repeat("a", dpop.MaxProofBytes+1), "POST", reqURL, token, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := dpop.Check(tc.proof, tc.method, tc.url, now, tc.token)
			if tc.ok {
				want, _ := dpop.Thumbprint(&jose.JSONWebKey{Key: pub})
				if err != nil || p.JKT != want || p.JTI == "" || !p.IssuedAt.Equal(time.Unix(now.Unix(), 0)) {
					t.Fatalf("Check = %+v, %v; want the proof of %s", p, err, want)
				}
				return
			}
			if err == nil || !errors.Is(err, dpop.ErrInvalidProof) {
				t.Fatalf("Check = %+v, %v; want ErrInvalidProof", p, err)
			}
		})
	}
}

// TestSignerRoundTrip: a Signer's proofs pass Check, each with its own jti
// (the caller's replay check relies on that), and carry the signer's JKT.
func TestSignerRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  func() (any, jose.SignatureAlgorithm)
	}{
		{"EdDSA", func() (any, jose.SignatureAlgorithm) {
			_, k, _ := ed25519.GenerateKey(rand.Reader)
			return k, jose.EdDSA
		}},
		{"ES256", func() (any, jose.SignatureAlgorithm) {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			return k, jose.ES256
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, alg := tc.key()
			var s *dpop.Signer
			var err error
			switch k := k.(type) {
			case ed25519.PrivateKey:
				s, err = dpop.NewSigner(k, alg)
			case *ecdsa.PrivateKey:
				s, err = dpop.NewSigner(k, alg)
			}
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for range 3 {
				proof, err := s.Proof("GET", reqURL, now, token)
				if err != nil {
					t.Fatal(err)
				}
				p, err := dpop.Check(proof, "GET", reqURL, now, token)
				if err != nil || p.JKT != s.JKT() || seen[p.JTI] {
					t.Fatalf("Check = %+v, %v (jkt %s, seen %v)", p, err, s.JKT(), seen)
				}
				seen[p.JTI] = true
			}
		})
	}
}

func TestAccessToken(t *testing.T) {
	for _, tc := range []struct {
		name, header      string
		schemes           []string
		token, wantScheme string
	}{
		{"bearer", "Bearer abc", []string{dpop.Bearer}, "abc", "Bearer"},
		{"case-insensitive scheme, scheme as sent", "bEaReR abc", []string{dpop.Bearer, dpop.DPoP}, "abc", "bEaReR"},
		{"dpop", "DPoP abc", []string{dpop.Bearer, dpop.DPoP}, "abc", "DPoP"},
		{"dpop where only bearer is taken", "DPoP abc", []string{dpop.Bearer}, "", ""},
		{"spaces trimmed", "Bearer   abc  ", []string{dpop.Bearer}, "abc", "Bearer"},
		{"no token", "Bearer", []string{dpop.Bearer}, "", ""},
		{"empty token", "Bearer ", []string{dpop.Bearer}, "", "Bearer"},
		{"other scheme", "Basic abc", []string{dpop.Bearer, dpop.DPoP}, "", ""},
		{"tab is no separator", "Bearer\tabc", []string{dpop.Bearer}, "", ""},
		{"no header", "", []string{dpop.Bearer}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
			if tc.header != "" {
				r.Header.Set("Authorization", tc.header)
			}
			tok, scheme := dpop.AccessToken(r, tc.schemes...)
			if tok != tc.token || scheme != tc.wantScheme {
				t.Fatalf("AccessToken(%q) = %q, %q; want %q, %q", tc.header, tok, scheme, tc.token, tc.wantScheme)
			}
		})
	}
}
