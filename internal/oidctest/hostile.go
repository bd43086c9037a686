package oidctest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Hostile is a token that a correct verifier must reject.
type Hostile struct {
	Name  string
	Token string
}

// HostileTokens returns tokens that a verifier trusting iss.URL() with
// audience "valet" and algorithms RS256, ES256 and EdDSA must reject, each
// wrong in one way only: wherever the case is not about the signature, the
// signature is real. valetTaskToken, if not empty, is added as one more case
// (a Valet task token is never an identity token).
//
// Some headers point at a second server (jku, x5u) that serves the
// attacker's keys; outboundHits counts the requests it received, which must
// stay 0: a verifier never follows them.
//
// The verifier is expected to match kid strictly, as go-oidc does: a token
// whose kid is unknown is rejected even if another published key would
// verify it.
func HostileTokens(t testing.TB, iss *Issuer, valetTaskToken string) (cases []Hostile, outboundHits func() int) {
	t.Helper()

	// The attacker: own keys, and a server that would hand them out.
	attackerRSA, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	attackerEC, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, attackerEd, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	const attackerKID = "attacker-key"
	attackerJWK := jose.JSONWebKey{Key: attackerRSA.Public(), KeyID: attackerKID, Algorithm: "RS256", Use: "sig"}
	var hits atomic.Int64
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		writeJSON(w, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{attackerJWK}})
	}))
	t.Cleanup(evil.Close)
	certDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: iss.URL()},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: iss.URL()}}, attackerRSA.Public(), attackerRSA)
	if err != nil {
		t.Fatal(err)
	}

	// The issuer's real keys, to name their kids and to forge with the RSA
	// public key as an HMAC secret.
	rsaKey, err := iss.pick("", "RS256")
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := iss.pick("", "ES256")
	if err != nil {
		t.Fatal(err)
	}
	edKey, err := iss.pick("", "EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(rsaKey.signer.Public())
	if err != nil {
		t.Fatal(err)
	}
	pkcs1 := x509.MarshalPKCS1PublicKey(rsaKey.signer.Public().(*rsa.PublicKey))
	pemPKIX := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	pemPKCS1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: pkcs1})

	now := time.Now()
	tok := func(claims map[string]any, opts ...Option) string {
		t.Helper()
		return iss.Token(t, claims, opts...)
	}
	// raw signs an arbitrary payload with the issuer's RS256 key.
	raw := func(header map[string]any, payload []byte) string {
		t.Helper()
		s, err := signCompact(header, payload, rsaKey.signer, "RS256")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// forgeHMAC builds an HS256 token over valid claims keyed with secret.
	forgeHMAC := func(secret []byte, alg string) string {
		t.Helper()
		header, payload, _, _ := iss.prepare(t, nil)
		header["alg"] = alg
		s, err := hmacCompact(header, payload, secret)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	validPayload := func() []byte {
		_, p, _, _ := iss.prepare(t, nil)
		return p
	}
	rsHeader := func(extra map[string]any) map[string]any {
		h := map[string]any{"alg": "RS256", "typ": "JWT", "kid": rsaKey.kid}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	flip := func(token string) string {
		t.Helper()
		i := strings.LastIndexByte(token, '.')
		sig, err := b64.DecodeString(token[i+1:])
		if err != nil || len(sig) == 0 {
			t.Fatalf("flip: %v", err)
		}
		sig[len(sig)/2] ^= 0x01
		return token[:i+1] + b64.EncodeToString(sig)
	}
	stripSig := func(token string) string {
		return token[:strings.LastIndexByte(token, '.')+1]
	}
	// rawHeader signs arbitrary header bytes with the issuer's RS256 key.
	rawHeader := func(header, payload []byte) string {
		t.Helper()
		input := b64.EncodeToString(header) + "." + b64.EncodeToString(payload)
		sig, err := signBytes(rsaKey.signer, "RS256", []byte(input))
		if err != nil {
			t.Fatal(err)
		}
		return input + "." + b64.EncodeToString(sig)
	}
	good := tok(nil)
	parts := strings.Split(good, ".")

	esDER := func() string {
		t.Helper()
		header, payload, _, _ := iss.prepare(t, nil, WithAlg("ES256"))
		h, _ := json.Marshal(header)
		input := b64.EncodeToString(h) + "." + b64.EncodeToString(payload)
		_, newHash := hashFor("ES256")
		d := newHash()
		d.Write([]byte(input))
		der, err := ecKey.signer.Sign(rand.Reader, d.Sum(nil), nil)
		if err != nil {
			t.Fatal(err)
		}
		return input + "." + b64.EncodeToString(der)
	}

	cases = []Hostile{
		// Algorithm.
		{"alg none", noneToken(validPayload(), "none")},
		{"alg None capitalised", noneToken(validPayload(), "None")},
		{"alg none with a real RS256 signature", tok(nil, WithHeader("alg", "none"))},
		{"alg empty", tok(nil, WithHeader("alg", ""))},
		{"alg missing", tok(nil, WithHeader("alg", nil))},
		{"alg lower case rs256", tok(nil, WithHeader("alg", "rs256"))},
		{"alg RS512 not allowed", tok(nil, WithAlg("RS512"))},
		{"alg PS256 not allowed", tok(nil, WithAlg("PS256"))},
		{"alg HS256 keyed with PEM (PKIX) public key", forgeHMAC(pemPKIX, "HS256")},
		{"alg HS256 keyed with PEM (PKCS1) public key", forgeHMAC(pemPKCS1, "HS256")},
		{"alg HS256 keyed with DER public key", forgeHMAC(pubDER, "HS256")},
		{"alg HS512 keyed with PEM public key", forgeHMAC(pemPKIX, "HS512")},
		{"alg not a string", tok(nil, WithHeader("alg", 256))},

		// Signature.
		{"signature stripped", stripSig(good)},
		{"signature bit-flipped RS256", flip(good)},
		{"signature bit-flipped ES256", flip(tok(nil, WithAlg("ES256")))},
		{"signature bit-flipped EdDSA", flip(tok(nil, WithAlg("EdDSA")))},
		{"signature of ES256 in ASN.1 DER form", esDER()},
		{"signature from foreign RSA key with the issuer's kid", tok(nil, WithSigner(attackerRSA, "RS256"), WithKID(rsaKey.kid))},
		{"signature from foreign EC key with the issuer's kid", tok(nil, WithSigner(attackerEC, "ES256"), WithKID(ecKey.kid))},
		{"signature from foreign Ed25519 key with the issuer's kid", tok(nil, WithSigner(attackerEd, "EdDSA"), WithKID(edKey.kid))},
		{"signature from foreign key without kid", tok(nil, WithSigner(attackerRSA, "RS256"))},
		{"expired and forged", tok(map[string]any{"exp": now.Add(-time.Hour).Unix()}, WithSigner(attackerRSA, "RS256"), WithKID(rsaKey.kid))},

		// Key id.
		{"kid unknown", tok(nil, WithHeader("kid", "unknown-kid"))},
		{"kid path-like", tok(nil, WithHeader("kid", "../../etc/passwd"))},
		{"kid huge (100 KB)", tok(nil, WithHeader("kid", strings.Repeat("k", 100<<10)))},
		{"kid not a string", tok(nil, WithHeader("kid", 7))},

		// Issuer.
		{"iss wrong", tok(map[string]any{"iss": "https://evil.example"})},
		{"iss with trailing slash", tok(map[string]any{"iss": iss.URL() + "/"})},
		{"iss scheme swapped", tok(map[string]any{"iss": swapScheme(iss.URL())})},
		{"iss upper-case scheme", tok(map[string]any{"iss": strings.ToUpper(iss.URL()[:4]) + iss.URL()[4:]})},
		{"iss missing", tok(map[string]any{"iss": nil})},
		{"iss numeric", tok(map[string]any{"iss": 1})},
		{"iss array", tok(map[string]any{"iss": []string{iss.URL()}})},

		// Audience.
		{"aud missing", tok(map[string]any{"aud": nil})},
		{"aud wrong", tok(map[string]any{"aud": "other"})},
		{"aud empty string", tok(map[string]any{"aud": ""})},
		{"aud empty array", tok(map[string]any{"aud": []string{}})},
		{"aud numeric", tok(map[string]any{"aud": 1})},
		{"aud array without valet", tok(map[string]any{"aud": []string{"other", "another"}})},
		{"aud array with an empty string", tok(map[string]any{"aud": []string{"valet", ""}})},
		{"aud array with a number", tok(map[string]any{"aud": []any{"valet", 1}})},
		{"aud case differs", tok(map[string]any{"aud": "Valet"})},

		// Time.
		{"exp in the past", tok(map[string]any{"iat": now.Add(-2 * time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix()})},
		{"exp past by more than the leeway", tok(map[string]any{"iat": now.Add(-10 * time.Minute).Unix(), "exp": now.Add(-61 * time.Second).Unix()})},
		{"exp missing", tok(map[string]any{"exp": nil})},
		{"exp as string", tok(map[string]any{"exp": "9999999999"})},
		{"exp absurd", tok(map[string]any{"exp": 1e300})},
		{"nbf in the future", tok(map[string]any{"nbf": now.Add(2 * time.Minute).Unix()})},
		{"nbf as string", tok(map[string]any{"nbf": "0"})},
		{"iat far in the future", tok(map[string]any{"iat": now.Add(time.Hour).Unix(), "exp": now.Add(2 * time.Hour).Unix()})},
		{"iat as string", tok(map[string]any{"iat": "0"})},

		// Subject.
		{"sub empty", tok(map[string]any{"sub": ""})},
		{"sub missing", tok(map[string]any{"sub": nil})},
		{"sub numeric", tok(map[string]any{"sub": 42})},

		// Not an identity token.
		{"typ dpop+jwt", tok(nil, WithHeader("typ", "dpop+jwt"))},
		{"typ application/secevent+jwt", tok(nil, WithHeader("typ", "application/secevent+jwt"))},
		{"typ logout+JWT", tok(nil, WithHeader("typ", "logout+JWT"))},
		{"typ empty", tok(nil, WithHeader("typ", ""))},
		{"typ absent spelled out", tok(nil, WithHeader("typ", "absent"))},
		{"task_id claim", tok(map[string]any{"task_id": "task-1"})},
		{"nested JWT (cty)", tok(nil, WithHeader("cty", "JWT"))},
		{"crit header", tok(nil, WithHeader("crit", []string{"exp"}), WithHeader("exp", now.Unix()))},

		// Key material in the token: never trusted, never fetched.
		{"jwk header, attacker key and signature", tok(nil, WithSigner(attackerRSA, "RS256"), WithKID(attackerKID), WithHeader("jwk", attackerJWK))},
		{"jwk header with the issuer's kid", tok(nil, WithSigner(attackerRSA, "RS256"), WithKID(rsaKey.kid), WithHeader("jwk", attackerJWK))},
		{"jku header to attacker server", tok(nil, WithSigner(attackerRSA, "RS256"), WithKID(attackerKID), WithHeader("jku", evil.URL+"/jwks"))},
		{"jku header with a real signature", tok(nil, WithHeader("jku", evil.URL+"/jwks"))},
		{"x5u header to attacker server", tok(nil, WithSigner(attackerRSA, "RS256"), WithHeader("x5u", evil.URL+"/cert.pem"))},
		{"x5c header, attacker certificate", tok(nil, WithSigner(attackerRSA, "RS256"), WithHeader("x5c", []string{base64.StdEncoding.EncodeToString(certDER)}))},

		// Size and shape.
		{"1 MB token", tok(map[string]any{"pad": strings.Repeat("a", 1<<20)})},
		{"a million dots", strings.Repeat(".", 1_000_000)},
		{"empty string", ""},
		{"two parts", parts[0] + "." + parts[1]},
		{"four parts", good + "." + parts[2]},
		{"empty header segment", "." + parts[1] + "." + parts[2]},
		{"empty payload segment", parts[0] + ".." + parts[2]},
		{"non-base64 segments", "ey!J.ey$J.s%g"},
		{"standard base64 with padding", strings.ReplaceAll(strings.ReplaceAll(parts[0], "-", "+"), "_", "/") + "==." + parts[1] + "." + parts[2]},
		{"newline inside the payload", parts[0] + "." + parts[1][:10] + "\n" + parts[1][10:] + "." + parts[2]},
		{"surrounding spaces", " " + good + " "},
		{"JWS JSON serialization", `{"protected":"` + parts[0] + `","payload":"` + parts[1] + `","signature":"` + parts[2] + `"}`},
		{"header not JSON", rawHeader([]byte("not json"), validPayload())},
		{"header a JSON array", rawHeader([]byte(`["RS256"]`), validPayload())},
		{"payload a JSON array", raw(rsHeader(nil), []byte(`["sub","agent-test"]`))},
		{"payload not JSON", raw(rsHeader(nil), []byte("agent-test"))},
	}
	if valetTaskToken != "" {
		cases = append(cases, Hostile{"valet task token", valetTaskToken})
	}
	return cases, func() int { return int(hits.Load()) }
}

// noneToken builds an unsigned token (empty signature) with the given alg.
func noneToken(payload []byte, alg string) string {
	h, _ := json.Marshal(map[string]any{"alg": alg, "typ": "JWT"})
	return b64.EncodeToString(h) + "." + b64.EncodeToString(payload) + "."
}

func swapScheme(u string) string {
	if rest, ok := strings.CutPrefix(u, "https://"); ok {
		return "http://" + rest
	}
	if rest, ok := strings.CutPrefix(u, "http://"); ok {
		return "https://" + rest
	}
	return u
}
