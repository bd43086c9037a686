package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/broker"
)

// issuerKeys is one issuer's verification keys: a guarded oidc.KeySet.
// Keys are cached; an unknown kid refreshes them at most once per interval,
// and concurrent callers share one fetch. Unlike oidc.RemoteKeySet, a flood
// of unknown kids cannot turn into a flood of JWKS requests.
//
// Only the key set comes from go-oidc's design, not its IDTokenVerifier:
// that verifier wraps key-set errors with %v (so an unreachable issuer's
// ErrUnavailable, the caller's 503, would become a 401), has no leeway on
// exp and a fixed five minutes on nbf, checks one audience, not a list, and
// reads no typ; Authenticate makes those checks itself, parsing the token
// once.
type issuerKeys struct {
	issuer   string // configured name, for messages
	issURL   string
	jwksURL  string // configured; empty means discover it
	static   bool
	algs     []jose.SignatureAlgorithm
	client   *http.Client
	now      func() time.Time
	interval time.Duration
	log      *slog.Logger

	mu         sync.Mutex
	keys       []jose.JSONWebKey // replaced on refresh, never mutated
	loaded     bool
	discovered string // jwks_uri from discovery
	last       time.Time
	lastErr    error
	inflight   *keyFetch
	gen        atomic.Uint64 // bumped whenever keys are replaced
}

// generation changes whenever the issuer's keys are replaced.
func (ks *issuerKeys) generation() uint64 { return ks.gen.Load() }

type keyFetch struct {
	done chan struct{}
	err  error
}

// errKeyRefreshLimited means a fetch was wanted but the last one is too recent.
var errKeyRefreshLimited = errors.New("key refresh rate-limited")

var _ oidc.KeySet = (*issuerKeys)(nil)

// VerifySignature checks raw's signature with the issuer's keys (refreshing
// them on an unknown kid, within the rate limit) and returns the signed
// payload. Errors wrapping broker.ErrUnavailable mean the keys could not be
// fetched.
func (ks *issuerKeys) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(raw, ks.algs)
	if err != nil {
		return nil, fmt.Errorf("parsing token: %v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errors.New("token must have exactly one signature")
	}
	h := jws.Signatures[0].Header
	kid, alg := h.KeyID, h.Algorithm

	keys, err := ks.load(ctx)
	if err != nil {
		return nil, err
	}
	payload, candidates := verifyWithKeys(jws, keys, kid, alg)
	if payload != nil {
		return payload, nil
	}
	// A kid we do not know may be a key the issuer just rotated in; a token
	// without kid that no key verifies, likewise.
	if ks.static || (kid != "" && candidates > 0) {
		return nil, ks.noKeyError(kid, alg, candidates)
	}
	keys, err = ks.refresh(ctx)
	if errors.Is(err, errKeyRefreshLimited) {
		return nil, ks.noKeyError(kid, alg, candidates)
	}
	if err != nil {
		return nil, err
	}
	payload, candidates = verifyWithKeys(jws, keys, kid, alg)
	if payload != nil {
		return payload, nil
	}
	return nil, ks.noKeyError(kid, alg, candidates)
}

func (ks *issuerKeys) noKeyError(kid, alg string, candidates int) error {
	if candidates > 0 {
		return fmt.Errorf("signature does not verify with issuer %q's %s keys", ks.issuer, alg)
	}
	return fmt.Errorf("issuer %q has no %s key with kid %s", ks.issuer, alg, quoteUntrusted(kid))
}

// verifyWithKeys tries the keys that match kid (any key when kid is empty) and
// alg. It returns the payload if one verifies, and how many keys it tried.
func verifyWithKeys(jws *jose.JSONWebSignature, keys []jose.JSONWebKey, kid, alg string) ([]byte, int) {
	tried := 0
	for i := range keys {
		k := &keys[i]
		if kid != "" && k.KeyID != kid {
			continue
		}
		if !keyFitsAlg(k, alg) {
			continue
		}
		tried++
		if payload, err := jws.Verify(k.Key); err == nil {
			return payload, tried
		}
	}
	return nil, tried
}

// keyFitsAlg reports whether k may verify a signature made with alg.
func keyFitsAlg(k *jose.JSONWebKey, alg string) bool {
	if k.Algorithm != "" && k.Algorithm != alg {
		return false
	}
	switch pub := k.Key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return pub.Curve == elliptic.P256()
		case "ES384":
			return pub.Curve == elliptic.P384()
		case "ES512":
			return pub.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// load returns the cached keys, fetching them first if they were never
// loaded (within the rate limit). Errors wrap broker.ErrUnavailable.
func (ks *issuerKeys) load(ctx context.Context) ([]jose.JSONWebKey, error) {
	ks.mu.Lock()
	if ks.loaded {
		keys := ks.keys
		ks.mu.Unlock()
		return keys, nil
	}
	ks.mu.Unlock()
	keys, err := ks.refresh(ctx)
	if err == nil {
		return keys, nil
	}
	ks.mu.Lock()
	loaded, last := ks.loaded, ks.lastErr
	keys = ks.keys
	ks.mu.Unlock()
	if loaded {
		return keys, nil
	}
	if errors.Is(err, errKeyRefreshLimited) && last != nil {
		err = last
	}
	if errors.Is(err, broker.ErrUnavailable) {
		return nil, err
	}
	return nil, fmt.Errorf("keys of issuer %q: %w: %w", ks.issuer, broker.ErrUnavailable, err)
}

// refresh fetches the keys unless the last fetch began less than interval
// ago (errKeyRefreshLimited). Concurrent callers share one fetch.
func (ks *issuerKeys) refresh(ctx context.Context) ([]jose.JSONWebKey, error) {
	if ks.static {
		return nil, errKeyRefreshLimited
	}
	ks.mu.Lock()
	if call := ks.inflight; call != nil {
		ks.mu.Unlock()
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for the keys of issuer %q: %w: %w", ks.issuer, broker.ErrUnavailable, ctx.Err())
		}
		if call.err != nil {
			return nil, call.err
		}
		ks.mu.Lock()
		keys := ks.keys
		ks.mu.Unlock()
		return keys, nil
	}
	now := ks.now()
	if !ks.last.IsZero() && now.Sub(ks.last) < ks.interval {
		ks.mu.Unlock()
		return nil, errKeyRefreshLimited
	}
	ks.last = now
	call := &keyFetch{done: make(chan struct{})}
	ks.inflight = call
	ks.mu.Unlock()

	// The fetch is shared: one caller giving up must not fail the others.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*idpHTTPTimeout)
	defer cancel()
	keys, discovered, err := ks.fetch(fctx)
	if err != nil {
		err = fmt.Errorf("fetching keys of issuer %q: %w: %w", ks.issuer, broker.ErrUnavailable, err)
	}

	ks.mu.Lock()
	if err == nil {
		ks.keys, ks.loaded, ks.discovered = keys, true, discovered
		ks.gen.Add(1)
	}
	ks.lastErr = err
	ks.inflight = nil
	ks.mu.Unlock()
	call.err = err
	close(call.done)

	if err != nil {
		ks.log.Warn("fetching trusted issuer keys failed", "issuer", ks.issuer, "err", err)
		return nil, err
	}
	ks.log.Info("trusted issuer keys loaded", "issuer", ks.issuer, "keys", len(keys))
	return keys, nil
}

// fetch runs discovery (once, unless a JWKS URL is configured) and fetches
// the JWKS.
func (ks *issuerKeys) fetch(ctx context.Context) ([]jose.JSONWebKey, string, error) {
	ks.mu.Lock()
	jwksURL := ks.jwksURL
	if jwksURL == "" {
		jwksURL = ks.discovered
	}
	ks.mu.Unlock()
	if jwksURL == "" {
		body, err := ks.get(ctx, strings.TrimSuffix(ks.issURL, "/")+"/.well-known/openid-configuration")
		if err != nil {
			return nil, "", fmt.Errorf("discovery: %w", err)
		}
		var doc oidc.ProviderConfig
		if err := json.Unmarshal(body, &doc); err != nil {
			return nil, "", fmt.Errorf("discovery: decoding: %w", err)
		}
		if doc.IssuerURL != ks.issURL {
			return nil, "", fmt.Errorf("discovery: document names issuer %s, not %q", quoteUntrusted(doc.IssuerURL), ks.issURL)
		}
		if err := checkIssuerURL(doc.JWKSURL); err != nil {
			return nil, "", fmt.Errorf("discovery: jwks_uri %w", err)
		}
		jwksURL = doc.JWKSURL
	}
	body, err := ks.get(ctx, jwksURL)
	if err != nil {
		return nil, "", fmt.Errorf("jwks: %w", err)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return nil, "", fmt.Errorf("jwks: %w", err)
	}
	discovered := ""
	if ks.jwksURL == "" {
		discovered = jwksURL
	}
	return keys, discovered, nil
}

// get fetches u and returns its body, at most maxIDPResponseBytes of it.
func (ks *issuerKeys) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := ks.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIDPResponseBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxIDPResponseBytes {
		return nil, fmt.Errorf("GET %s: response larger than %d bytes", u, maxIDPResponseBytes)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return body, nil
}

// parseJWKS reads a JWKS document and keeps the keys fit to verify
// signatures: public RSA (2048 bits or more), EC and Ed25519 keys not
// reserved for encryption. Keys it cannot read are skipped, so one odd key
// does not take the issuer down; a document with no usable key is an error.
func parseJWKS(data []byte) ([]jose.JSONWebKey, error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("not a JWKS document: %v", err)
	}
	if len(doc.Keys) > maxJWKSKeys {
		return nil, fmt.Errorf("%d keys, more than %d", len(doc.Keys), maxJWKSKeys)
	}
	var keys []jose.JSONWebKey
	for _, raw := range doc.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			continue
		}
		if !k.Valid() || !k.IsPublic() || (k.Use != "" && k.Use != "sig") {
			continue
		}
		switch pub := k.Key.(type) {
		case *rsa.PublicKey:
			if pub.N.BitLen() < minJWKSRSABits {
				continue
			}
		case *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no usable signing key")
	}
	return keys, nil
}
