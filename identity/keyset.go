package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// KeySet is one issuer's verification keys with the guards identity
// tokens have (cached; an unknown kid refreshes at most once per
// RefreshInterval; concurrent callers share one fetch; bodies capped), for
// other signed tokens from a configured party: the SETs of an SSF
// transmitter. Safe for concurrent use.
type KeySet struct{ ks *issuerKeys }

// NewKeySet builds the key set of the issuer named name (for messages) at
// issuerURL, fetching its JWKS from jwksURL (empty: found by OIDC
// discovery), accepting only algs. opts supplies the clock, HTTP client,
// refresh interval and logger (their defaults as for New). Keys are fetched
// on first use.
func NewKeySet(name, issuerURL, jwksURL string, algs []string, opts Options) (*KeySet, error) {
	var errs []error
	if name == "" {
		errs = append(errs, errors.New("name is required"))
	}
	if !strings.HasPrefix(issuerURL, "https://") && !strings.HasPrefix(issuerURL, "http://") {
		errs = append(errs, fmt.Errorf("issuer %q must be an http(s) URL", issuerURL))
	}
	if jwksURL != "" && !strings.HasPrefix(jwksURL, "https://") && !strings.HasPrefix(jwksURL, "http://") {
		errs = append(errs, fmt.Errorf("jwks_url %q must be an http(s) URL", jwksURL))
	}
	if len(algs) == 0 {
		errs = append(errs, errors.New("at least one algorithm is required"))
	}
	var joseAlgs []jose.SignatureAlgorithm
	for _, a := range algs {
		switch a {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA":
			joseAlgs = append(joseAlgs, jose.SignatureAlgorithm(a))
		default:
			errs = append(errs, fmt.Errorf("algorithm %q is not supported", a))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("key set %q: %w", name, errors.Join(errs...))
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: idpHTTPTimeout}
	}
	if opts.RefreshInterval <= 0 {
		opts.RefreshInterval = defaultKeyRefreshInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	return &KeySet{ks: &issuerKeys{issuer: name, issURL: issuerURL, jwksURL: jwksURL, algs: joseAlgs,
		client: opts.HTTPClient, now: now, interval: opts.RefreshInterval, log: opts.Logger}}, nil
}

// VerifySignature checks raw's one signature with the issuer's keys and
// returns the signed payload. Errors wrapping broker.ErrUnavailable mean
// the keys could not be fetched; any other error means the token is bad.
func (k *KeySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	return k.ks.VerifySignature(ctx, raw)
}
