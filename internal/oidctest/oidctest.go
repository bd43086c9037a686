// Package oidctest runs a real OpenID Connect issuer (discovery document and
// JWKS) on httptest, with per-test keys, and mints identity tokens for tests:
// good ones with Token and hostile ones with HostileTokens.
package oidctest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// DefaultAudience is the aud every token gets unless the caller overrides it.
const DefaultAudience = "valet"

// DefaultSubject is the sub every token gets unless the caller overrides it.
const DefaultSubject = "agent-test"

// Issuer is an OIDC issuer served by httptest. It is safe for concurrent use.
type Issuer struct {
	srv *httptest.Server

	mu   sync.RWMutex
	keys []signingKey // in the order they were added; the JWKS lists them all

	jwksFetches      atomic.Int64
	discoveryFetches atomic.Int64
	down             atomic.Bool
}

type signingKey struct {
	kid    string
	alg    string
	signer crypto.Signer
}

// New starts an issuer with three fresh keys, one per algorithm (RS256 on
// RSA-2048, ES256 on P-256, EdDSA on Ed25519), each with its own kid. The
// server is closed when the test ends.
func New(t testing.TB) *Issuer {
	t.Helper()
	iss := &Issuer{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", iss.serveDiscovery)
	mux.HandleFunc("GET /jwks", iss.serveJWKS)
	iss.srv = httptest.NewServer(mux)
	t.Cleanup(iss.srv.Close)
	for _, alg := range []string{"RS256", "ES256", "EdDSA"} {
		iss.AddKey(alg)
	}
	return iss
}

// URL is the issuer identifier exactly as it appears in iss: the server's
// base URL, without a trailing slash.
func (iss *Issuer) URL() string { return iss.srv.URL }

// JWKSFetches counts the GET requests served on /jwks so far.
func (iss *Issuer) JWKSFetches() int { return int(iss.jwksFetches.Load()) }

// DiscoveryFetches counts the GET requests served on
// /.well-known/openid-configuration so far.
func (iss *Issuer) DiscoveryFetches() int { return int(iss.discoveryFetches.Load()) }

// SetDown takes the issuer down (an IdP outage: discovery and JWKS answer
// 503, and are still counted as fetches) or brings it back.
func (iss *Issuer) SetDown(down bool) { iss.down.Store(down) }

// outage answers 503 when the issuer is down.
func (iss *Issuer) outage(w http.ResponseWriter) bool {
	if !iss.down.Load() {
		return false
	}
	http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	return true
}

// AddKey generates a key for alg, publishes it in the JWKS (key rotation) and
// returns its kid. Supported: RS256/384/512 and PS256/384/512 (RSA-2048),
// ES256/384/512 (P-256/384/521) and EdDSA (Ed25519). It panics on any other
// alg, which is a bug in the test.
func (iss *Issuer) AddKey(alg string) (kid string) {
	signer, err := generateKey(alg)
	if err != nil {
		panic("oidctest: " + err.Error())
	}
	kid = strings.ToLower(alg) + "-" + randomHex(8)
	iss.mu.Lock()
	iss.keys = append(iss.keys, signingKey{kid: kid, alg: alg, signer: signer})
	iss.mu.Unlock()
	return kid
}

// RemoveKey stops publishing the key kid (a rotation that retires it).
func (iss *Issuer) RemoveKey(kid string) {
	iss.mu.Lock()
	defer iss.mu.Unlock()
	kept := iss.keys[:0:0]
	for _, k := range iss.keys {
		if k.kid != kid {
			kept = append(kept, k)
		}
	}
	iss.keys = kept
}

// AddSigner publishes the caller's key for alg in the JWKS and returns its
// kid: for a client that signs its own assertions (golang.org/x/oauth2/jwt)
// as if it were this issuer.
func (iss *Issuer) AddSigner(signer crypto.Signer, alg string) (kid string) {
	kid = strings.ToLower(alg) + "-" + randomHex(8)
	iss.mu.Lock()
	iss.keys = append(iss.keys, signingKey{kid: kid, alg: alg, signer: signer})
	iss.mu.Unlock()
	return kid
}

// Option changes how Token signs.
type Option func(*tokenOptions)

type tokenOptions struct {
	alg       string
	kid       string
	headers   map[string]any
	headerSet []string // keys of headers, in the order they were set
	signer    crypto.Signer
	signerAlg string
	now       time.Time
}

// WithAlg signs with the issuer's key for alg. When no key was added for
// exactly alg, a key of the same family signs (the RSA key for RS512 or
// PS256, for example), keeping that key's kid: a real signature under an
// algorithm the verifier may not allow.
func WithAlg(alg string) Option { return func(o *tokenOptions) { o.alg = alg } }

// WithKID signs with the issuer's key that has this kid. Together with
// WithSigner it only sets the kid header.
func WithKID(kid string) Option { return func(o *tokenOptions) { o.kid = kid } }

// WithHeader sets (or overrides) one protected header, for example typ, jku
// or jwk. A nil value removes the header.
func WithHeader(key string, value any) Option {
	return func(o *tokenOptions) {
		if o.headers == nil {
			o.headers = map[string]any{}
		}
		o.headers[key] = value
		o.headerSet = append(o.headerSet, key)
	}
}

// WithSigner signs with a key the issuer does not publish. The kid header is
// left out unless WithKID names one.
func WithSigner(priv crypto.Signer, alg string) Option {
	return func(o *tokenOptions) { o.signer, o.signerAlg = priv, alg }
}

// WithNow sets the clock the default iat and exp are computed from.
func WithNow(now time.Time) Option { return func(o *tokenOptions) { o.now = now } }

// Token signs a compact JWS over the default claims (iss=URL(), aud="valet",
// sub="agent-test", iat=now, exp=now+5m) merged with claims: a caller's
// claim overrides the default, and a claim set to nil is left out. The
// default algorithm is RS256; the header carries alg, typ "JWT" and kid.
func (iss *Issuer) Token(t testing.TB, claims map[string]any, opts ...Option) string {
	t.Helper()
	header, payload, signer, alg := iss.prepare(t, claims, opts...)
	tok, err := signCompact(header, payload, signer, alg)
	if err != nil {
		t.Fatalf("oidctest: signing token: %v", err)
	}
	return tok
}

// prepare resolves options into the header, payload and key of a token.
func (iss *Issuer) prepare(t testing.TB, claims map[string]any, opts ...Option) (map[string]any, []byte, crypto.Signer, string) {
	t.Helper()
	var o tokenOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.now.IsZero() {
		o.now = time.Now()
	}
	merged := map[string]any{
		"iss": iss.URL(),
		"aud": DefaultAudience,
		"sub": DefaultSubject,
		"iat": o.now.Unix(),
		"exp": o.now.Add(5 * time.Minute).Unix(),
	}
	for k, v := range claims {
		if v == nil {
			delete(merged, k)
			continue
		}
		merged[k] = v
	}
	payload, err := json.Marshal(merged)
	if err != nil {
		t.Fatalf("oidctest: encoding claims: %v", err)
	}

	header := map[string]any{"typ": "JWT"}
	var signer crypto.Signer
	var alg string
	if o.signer != nil {
		signer, alg = o.signer, o.signerAlg
		if o.kid != "" {
			header["kid"] = o.kid
		}
	} else {
		k, err := iss.pick(o.kid, o.alg)
		if err != nil {
			t.Fatalf("oidctest: %v", err)
		}
		signer, alg = k.signer, k.alg
		if o.alg != "" {
			alg = o.alg
		}
		header["kid"] = k.kid
	}
	header["alg"] = alg
	for _, k := range o.headerSet {
		if v := o.headers[k]; v == nil {
			delete(header, k)
		} else {
			header[k] = v
		}
	}
	return header, payload, signer, alg
}

// pick finds the signing key: by kid if given, else by exact alg, else by
// alg family.
func (iss *Issuer) pick(kid, alg string) (signingKey, error) {
	iss.mu.RLock()
	defer iss.mu.RUnlock()
	if kid != "" {
		for _, k := range iss.keys {
			if k.kid == kid {
				return k, nil
			}
		}
		return signingKey{}, fmt.Errorf("no key with kid %q", kid)
	}
	if alg == "" {
		alg = "RS256"
	}
	for _, k := range iss.keys {
		if k.alg == alg {
			return k, nil
		}
	}
	for _, k := range iss.keys {
		if family(k.alg) == family(alg) && family(alg) != "" {
			return k, nil
		}
	}
	return signingKey{}, fmt.Errorf("no key for alg %q", alg)
}

func (iss *Issuer) serveDiscovery(w http.ResponseWriter, _ *http.Request) {
	iss.discoveryFetches.Add(1)
	if iss.outage(w) {
		return
	}
	iss.mu.RLock()
	var algs []string
	seen := map[string]bool{}
	for _, k := range iss.keys {
		if !seen[k.alg] {
			seen[k.alg] = true
			algs = append(algs, k.alg)
		}
	}
	iss.mu.RUnlock()
	writeJSON(w, map[string]any{
		"issuer":                                iss.URL(),
		"jwks_uri":                              iss.URL() + "/jwks",
		"authorization_endpoint":                iss.URL() + "/authorize",
		"response_types_supported":              []string{"id_token"},
		"subject_types_supported":               []string{"public"},
		"id_token_signing_alg_values_supported": algs,
	})
}

func (iss *Issuer) serveJWKS(w http.ResponseWriter, _ *http.Request) {
	iss.jwksFetches.Add(1)
	if iss.outage(w) {
		return
	}
	iss.mu.RLock()
	set := jose.JSONWebKeySet{}
	for _, k := range iss.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.signer.Public(), KeyID: k.kid, Algorithm: k.alg, Use: "sig"})
	}
	iss.mu.RUnlock()
	writeJSON(w, set)
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// family groups algorithms by the kind of key that signs them.
func family(alg string) string {
	switch alg {
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		return "RSA"
	case "ES256":
		return "P-256"
	case "ES384":
		return "P-384"
	case "ES512":
		return "P-521"
	case "EdDSA":
		return "Ed25519"
	}
	return ""
}

func generateKey(alg string) (crypto.Signer, error) {
	switch family(alg) {
	case "RSA":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "P-256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "P-384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "P-521":
		return ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "Ed25519":
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	return nil, fmt.Errorf("unsupported alg %q", alg)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

var b64 = base64.RawURLEncoding

// signCompact serialises header and payload and signs them with signer under
// alg. alg "none" gives an empty signature.
func signCompact(header map[string]any, payload []byte, signer crypto.Signer, alg string) (string, error) {
	h, err := json.Marshal(header)
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(payload)
	sig, err := signBytes(signer, alg, []byte(input))
	if err != nil {
		return "", err
	}
	return input + "." + b64.EncodeToString(sig), nil
}

// hmacCompact signs with HMAC-SHA-256 keyed with secret, whatever header.alg
// says: the classic key-confusion forgery.
func hmacCompact(header map[string]any, payload []byte, secret []byte) (string, error) {
	h, err := json.Marshal(header)
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(payload)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(input))
	return input + "." + b64.EncodeToString(mac.Sum(nil)), nil
}

func hashFor(alg string) (crypto.Hash, func() hash.Hash) {
	switch alg[len(alg)-3:] {
	case "384":
		return crypto.SHA384, sha512.New384
	case "512":
		return crypto.SHA512, sha512.New
	}
	return crypto.SHA256, sha256.New
}

func signBytes(signer crypto.Signer, alg string, input []byte) ([]byte, error) {
	if alg == "none" {
		return nil, nil
	}
	if signer == nil {
		return nil, fmt.Errorf("no key to sign %s", alg)
	}
	switch alg {
	case "EdDSA":
		return signer.Sign(rand.Reader, input, crypto.Hash(0))
	case "RS256", "RS384", "RS512":
		h, newHash := hashFor(alg)
		d := newHash()
		d.Write(input)
		return signer.Sign(rand.Reader, d.Sum(nil), h)
	case "PS256", "PS384", "PS512":
		h, newHash := hashFor(alg)
		d := newHash()
		d.Write(input)
		return signer.Sign(rand.Reader, d.Sum(nil), &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: h})
	case "ES256", "ES384", "ES512":
		h, newHash := hashFor(alg)
		d := newHash()
		d.Write(input)
		der, err := signer.Sign(rand.Reader, d.Sum(nil), h)
		if err != nil {
			return nil, err
		}
		pub, ok := signer.Public().(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("%s needs an ECDSA key, not %T", alg, signer.Public())
		}
		return derToRaw(der, (pub.Curve.Params().BitSize+7)/8)
	}
	return nil, fmt.Errorf("unsupported alg %q", alg)
}

// derToRaw turns an ASN.1 ECDSA signature into JWS's fixed-size r||s.
func derToRaw(der []byte, size int) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		return nil, err
	}
	out := make([]byte, 2*size)
	sig.R.FillBytes(out[:size])
	sig.S.FillBytes(out[size:])
	return out, nil
}
