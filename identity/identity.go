package identity

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// Options tune a Verifier. The zero value is usable.
type Options struct {
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Leeway is the clock skew allowed on exp, nbf and iat; default 30s,
	// at most 60s.
	Leeway time.Duration
	// MaxTokenBytes bounds a token's length, checked before any parsing;
	// default 16384.
	MaxTokenBytes int
	// RefreshInterval is the least time between two key fetches of one
	// issuer (at start-up, on an unknown kid, or while the issuer is down);
	// default 30s.
	RefreshInterval time.Duration
	// HTTPClient fetches discovery documents and JWKS; default a client with
	// a 5s timeout. Response bodies are capped at 1 MiB whatever the client.
	HTTPClient *http.Client
	// SelfIssuer is the issuer URL of Valet's own task tokens: such tokens
	// are never identity, and no trusted issuer may name it.
	SelfIssuer string
	// Logger receives key-fetch events; default slog.Default(). Rejections
	// are not logged here: the caller logs them once, with the request.
	Logger *slog.Logger
	// CacheSize bounds how many verified tokens are remembered (cache.go);
	// default DefaultCacheSize, negative turns the cache off.
	CacheSize int
}

const (
	defaultIDLeeway           = 30 * time.Second
	maxIDLeeway               = 60 * time.Second
	defaultMaxIDTokenBytes    = 16 << 10
	defaultKeyRefreshInterval = 30 * time.Second
	idpHTTPTimeout            = 5 * time.Second
	maxIDPResponseBytes       = 1 << 20
	maxJWKSKeys               = 100
	minJWKSRSABits            = 2048
	maxQuotedLen              = 128 // how much of an untrusted value an error quotes
)

// Verifier verifies identity tokens from the trusted issuers: agents',
// end users' (subject_token) and, built with the admin issuers, admins'. It
// implements broker.Authenticator and is safe for concurrent use.
type Verifier struct {
	issuers []*trustedIssuer
	byURL   map[string]*trustedIssuer
	anyAlg  map[string]bool // union of every issuer's algorithms
	now     func() time.Time
	leeway  time.Duration
	maxLen  int
	self    string
	log     *slog.Logger
	cache   *tokenCache
}

// trustedIssuer is one IssuerConfig made ready for requests.
type trustedIssuer struct {
	cfg       IssuerConfig
	algs      map[string]bool
	audiences map[string]bool
	types     map[string]bool // normalTyp values; TypAbsent for none
	cond      *policy.Condition
	keys      *issuerKeys
}

// New validates cfgs, compiles their conditions and loads every
// issuer's keys. An issuer that cannot be reached now does not fail
// start-up: its keys are fetched again on use, at most once per
// RefreshInterval, and until then Authenticate answers with an error
// wrapping broker.ErrUnavailable.
func New(ctx context.Context, cfgs []IssuerConfig, opts Options) (*Verifier, error) {
	prepared, errs := prepareIssuers(cfgs, opts.SelfIssuer)
	if opts.Leeway < 0 || opts.Leeway > maxIDLeeway {
		errs = append(errs, fmt.Errorf("identity: leeway %s must be between 0 and %s", opts.Leeway, maxIDLeeway))
	}
	if opts.MaxTokenBytes < 0 {
		errs = append(errs, fmt.Errorf("identity: max token bytes %d is negative", opts.MaxTokenBytes))
	}
	if opts.RefreshInterval < 0 {
		errs = append(errs, fmt.Errorf("identity: refresh interval %s is negative", opts.RefreshInterval))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("configuring trusted issuers: %w", errors.Join(errs...))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Leeway == 0 {
		opts.Leeway = defaultIDLeeway
	}
	if opts.MaxTokenBytes == 0 {
		opts.MaxTokenBytes = defaultMaxIDTokenBytes
	}
	if opts.RefreshInterval == 0 {
		opts.RefreshInterval = defaultKeyRefreshInterval
	}
	if opts.HTTPClient == nil {
		opts.HTTPClient = &http.Client{Timeout: idpHTTPTimeout}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}

	v := &Verifier{
		byURL:  map[string]*trustedIssuer{},
		anyAlg: map[string]bool{},
		now:    opts.Now,
		leeway: opts.Leeway,
		maxLen: opts.MaxTokenBytes,
		self:   opts.SelfIssuer,
		log:    opts.Logger,
		cache:  newTokenCache(opts.CacheSize),
	}
	for _, p := range prepared {
		ti := &trustedIssuer{
			cfg:       p.cfg,
			algs:      map[string]bool{},
			audiences: map[string]bool{},
			types:     map[string]bool{},
			cond:      p.cond,
		}
		for _, typ := range p.cfg.Types {
			if strings.EqualFold(typ, TypAbsent) {
				ti.types[TypAbsent] = true
			} else {
				ti.types[normalTyp(typ)] = true
			}
		}
		var joseAlgs []jose.SignatureAlgorithm
		for _, a := range p.cfg.Algorithms {
			ti.algs[a] = true
			v.anyAlg[a] = true
			joseAlgs = append(joseAlgs, jose.SignatureAlgorithm(a))
		}
		for _, a := range p.cfg.Audiences {
			ti.audiences[a] = true
		}
		ti.keys = &issuerKeys{
			issuer:   p.cfg.Name,
			issURL:   p.cfg.IssuerURL,
			jwksURL:  p.cfg.JWKSURL,
			static:   len(p.cfg.StaticJWKS) > 0,
			algs:     joseAlgs,
			client:   opts.HTTPClient,
			now:      opts.Now,
			interval: opts.RefreshInterval,
			log:      opts.Logger,
		}
		if ti.keys.static {
			ti.keys.keys, ti.keys.loaded = p.staticKeys, true
		}
		v.issuers = append(v.issuers, ti)
		v.byURL[p.cfg.IssuerURL] = ti
	}

	var wg sync.WaitGroup
	for _, ti := range v.issuers {
		if ti.keys.static {
			continue
		}
		wg.Go(func() {
			if _, err := ti.keys.load(ctx); err != nil {
				v.log.Warn("trusted issuer unreachable at start; will retry on use",
					"issuer", ti.cfg.Name, "issuer_url", ti.cfg.IssuerURL, "err", err)
			}
		})
	}
	wg.Wait()
	return v, nil
}

// Issuers returns the trusted issuers as configured, with defaults applied.
func (v *Verifier) Issuers() []IssuerConfig {
	out := make([]IssuerConfig, len(v.issuers))
	for i, ti := range v.issuers {
		c := ti.cfg
		c.Audiences = slices.Clone(c.Audiences)
		c.Algorithms = slices.Clone(c.Algorithms)
		c.StaticJWKS = slices.Clone(c.StaticJWKS)
		c.Types = slices.Clone(c.Types)
		out[i] = c
	}
	return out
}

// Ready reports whether every issuer has keys loaded, trying to load them
// now (within the refresh rate limit) for those that do not. Errors wrap
// broker.ErrUnavailable.
func (v *Verifier) Ready(ctx context.Context) error {
	var errs []error
	for _, ti := range v.issuers {
		if _, err := ti.keys.load(ctx); err != nil {
			errs = append(errs, fmt.Errorf("issuer %q: %w", ti.cfg.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Authenticate verifies raw as an identity token from one of the trusted
// issuers and returns the agent it names. An error wrapping broker.ErrUnavailable
// means the issuer's keys could not be fetched; any other error means the
// token is not acceptable. Errors never contain the token.
func (v *Verifier) Authenticate(ctx context.Context, raw string) (broker.Principal, error) {
	return v.authenticate(ctx, raw)
}

// Header parameters that make a token carry or point at its own key, or
// change how it is processed; an identity token never needs them.
var forbiddenIDTokenHeaders = []string{"jku", "x5u", "jwk", "x5c", "crit", "b64", "cty", "zip", "enc"}

func (v *Verifier) authenticate(ctx context.Context, raw string) (broker.Principal, error) {
	// (1) Size, before anything else.
	if len(raw) > v.maxLen {
		return broker.Principal{}, fmt.Errorf("token is %d bytes, more than the limit of %d", len(raw), v.maxLen)
	}
	// A token verified before, still within its life, under the same keys.
	key := tokenKey(raw)
	if p, ok := v.cache.get(key, v.now()); ok {
		return p, nil
	}

	// (2) Shape: compact serialization, three non-empty base64url segments.
	if n := strings.Count(raw, "."); n != 2 {
		return broker.Principal{}, fmt.Errorf("token has %d '.' separators, not 2", n)
	}
	h64, rest, _ := strings.Cut(raw, ".")
	p64, s64, _ := strings.Cut(rest, ".")
	var segs [3][]byte
	for i, s := range []string{h64, p64, s64} {
		b, err := decodeJWTSegment(s)
		if err != nil {
			return broker.Principal{}, fmt.Errorf("token segment %d: %w", i+1, err)
		}
		segs[i] = b
	}

	// (3) Header.
	var hdrFields map[string]json.RawMessage
	if err := json.Unmarshal(segs[0], &hdrFields); err != nil || hdrFields == nil {
		return broker.Principal{}, errors.New("token header is not a JSON object")
	}
	for _, f := range forbiddenIDTokenHeaders {
		if _, ok := hdrFields[f]; ok {
			return broker.Principal{}, fmt.Errorf("token header %q is not accepted", f)
		}
	}
	_, hasTyp := hdrFields["typ"]
	var hdr [3]string // alg, typ, kid; the map keeps names exact ("ALG" is not "alg")
	for i, name := range []string{"alg", "typ", "kid"} {
		v, ok := hdrFields[name]
		if !ok {
			continue
		}
		if err := json.Unmarshal(v, &hdr[i]); err != nil {
			return broker.Principal{}, fmt.Errorf("token header %q is not a string", name)
		}
	}
	alg, typ := hdr[0], hdr[1]
	if !v.anyAlg[alg] {
		return broker.Principal{}, fmt.Errorf("token alg %s is not allowed", quoteUntrusted(alg))
	}

	// (4) Pick the issuer by the unverified iss, exactly. The payload is
	// decoded once, here; nothing but iss is read from it before the
	// signature is verified. A map, not a struct: encoding/json matches
	// struct fields without regard to case, and "ISS" is not "iss".
	var claims map[string]any
	if err := json.Unmarshal(segs[1], &claims); err != nil || claims == nil {
		return broker.Principal{}, errors.New("token payload is not a JSON object")
	}
	issStr, _ := claims["iss"].(string)
	if issStr == "" {
		return broker.Principal{}, errors.New("token iss is missing or not a string")
	}
	if v.self != "" && issStr == v.self {
		return broker.Principal{}, errors.New("token is one of Valet's own task tokens, not an identity token")
	}
	ti, ok := v.byURL[issStr]
	if !ok {
		return broker.Principal{}, fmt.Errorf("token iss %s is not a trusted issuer", quoteUntrusted(issStr))
	}
	if !ti.algs[alg] {
		return broker.Principal{}, fmt.Errorf("token alg %s is not allowed for issuer %q", quoteUntrusted(alg), ti.cfg.Name)
	}
	if normTyp := normalTyp(typ); (!hasTyp && !ti.types[TypAbsent]) || (hasTyp && (normTyp == TypAbsent || !ti.types[normTyp])) {
		return broker.Principal{}, fmt.Errorf("token typ %s is not accepted for issuer %q (issuers[].types)", quoteUntrusted(typ), ti.cfg.Name)
	}

	// (5) Signature, with the issuer's keys and algorithms. The verified
	// payload must be the very bytes decoded above, so the claims read
	// below are the signed ones.
	keysGen := ti.keys.generation() // read before: a refresh during the check makes the entry stale, never fresh
	payload, err := ti.keys.VerifySignature(ctx, raw)
	if err != nil {
		return broker.Principal{}, fmt.Errorf("verifying token from issuer %q: %w", ti.cfg.Name, err)
	}
	if !bytes.Equal(payload, segs[1]) {
		return broker.Principal{}, fmt.Errorf("verifying token from issuer %q: signed payload differs from the decoded one", ti.cfg.Name)
	}

	// (6) Claims, after the signature.
	if err := checkOIDCClaimTypes(claims); err != nil {
		return broker.Principal{}, err
	}
	now := v.now()
	exp, err := claimTime(claims, "exp")
	if err != nil {
		return broker.Principal{}, err
	}
	if exp.IsZero() {
		return broker.Principal{}, errors.New("token has no exp")
	}
	if !now.Before(exp.Add(v.leeway)) {
		return broker.Principal{}, fmt.Errorf("token expired at %s", exp.UTC().Format(time.RFC3339))
	}
	for _, name := range []string{"nbf", "iat"} {
		t, err := claimTime(claims, name)
		if err != nil {
			return broker.Principal{}, err
		}
		if !t.IsZero() && t.After(now.Add(v.leeway)) {
			return broker.Principal{}, fmt.Errorf("token %s %s is in the future", name, t.UTC().Format(time.RFC3339))
		}
	}
	if err := ti.checkAudience(claims["aud"]); err != nil {
		return broker.Principal{}, err
	}
	if sub, _ := claims["sub"].(string); sub == "" {
		return broker.Principal{}, errors.New("token sub is missing or empty")
	}
	subject, _ := claims[ti.cfg.SubjectClaim].(string)
	if subject == "" {
		return broker.Principal{}, fmt.Errorf("token claim %q naming the agent is missing, empty or not a string", ti.cfg.SubjectClaim)
	}
	if _, ok := claims["task_id"]; ok {
		return broker.Principal{}, errors.New("token carries task_id: a task token is not an identity token")
	}
	if iss, _ := claims["iss"].(string); iss != ti.cfg.IssuerURL || (v.self != "" && iss == v.self) {
		return broker.Principal{}, fmt.Errorf("token iss %s does not match issuer %q", quoteUntrusted(iss), ti.cfg.Name)
	}

	// (7) The issuer's condition.
	if ti.cond != nil {
		ok, err := ti.cond.Eval(map[string]any{"claims": claims})
		if err != nil {
			return broker.Principal{}, fmt.Errorf("issuer %q condition: %v", ti.cfg.Name, err)
		}
		if !ok {
			return broker.Principal{}, fmt.Errorf("issuer %q condition %q is false for this token", ti.cfg.Name, ti.cond.Expression)
		}
	}

	p := broker.Principal{
		Issuer:      ti.cfg.Name,
		IssuerURL:   ti.cfg.IssuerURL,
		Subject:     subject,
		Claims:      claims,
		TokenExpiry: exp,
	}
	v.cache.put(key, cachedToken{p: p, ti: ti, gen: keysGen, until: exp.Add(v.leeway)}, now)
	return p, nil
}

// decodeJWTSegment decodes one strict, unpadded base64url segment. Unlike
// base64.RawURLEncoding.DecodeString alone it refuses newlines and other
// characters outside the alphabet.
func decodeJWTSegment(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("is empty")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return nil, errors.New("is not base64url")
		}
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, errors.New("is not base64url")
	}
	return b, nil
}

// checkOIDCClaimTypes refuses the standard claims an OIDC client could not
// decode: nonce and at_hash that are not strings, and distributed claims
// (_claim_names) naming a source that _claim_sources does not hold. These
// are the refusals go-oidc's IDTokenVerifier made when it decoded the
// payload; exp, nbf, iat, aud, sub and iss are checked where they are used.
func checkOIDCClaimTypes(claims map[string]any) error {
	for _, name := range []string{"nonce", "at_hash"} {
		if v, ok := claims[name]; ok && v != nil {
			if _, ok := v.(string); !ok {
				return fmt.Errorf("token %s is not a string", name)
			}
		}
	}
	var sources map[string]any
	if v, ok := claims["_claim_sources"]; ok && v != nil {
		if sources, ok = v.(map[string]any); !ok {
			return errors.New("token _claim_sources is not an object")
		}
		for _, src := range sources {
			m, ok := src.(map[string]any)
			if src != nil && !ok {
				return errors.New("token _claim_sources has a source that is not an object")
			}
			for _, f := range []string{"endpoint", "access_token"} {
				if fv, ok := m[f]; ok && fv != nil {
					if _, ok := fv.(string); !ok {
						return fmt.Errorf("token _claim_sources has a %s that is not a string", f)
					}
				}
			}
		}
	}
	if v, ok := claims["_claim_names"]; ok && v != nil {
		names, ok := v.(map[string]any)
		if !ok {
			return errors.New("token _claim_names is not an object")
		}
		for _, src := range names {
			s, ok := src.(string)
			if src != nil && !ok {
				return errors.New("token _claim_names has a source that is not a string")
			}
			if _, ok := sources[s]; !ok || s == "" {
				return errors.New("token _claim_names names a source that does not exist")
			}
		}
	}
	return nil
}

// claimTime reads an optional NumericDate claim. A present claim that is
// not a number in a sane range is an error; an absent one is the zero time.
func claimTime(claims map[string]any, name string) (time.Time, error) {
	v, ok := claims[name]
	if !ok {
		return time.Time{}, nil
	}
	f, ok := v.(float64)
	if !ok {
		return time.Time{}, fmt.Errorf("token %s is not a number", name)
	}
	// 0 < f < year 10000: anything else is no date an issuer means.
	if math.IsNaN(f) || f <= 0 || f >= 253402300800 {
		return time.Time{}, fmt.Errorf("token %s %g is out of range", name, f)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// checkAudience requires aud to be a non-empty string, or a non-empty list of
// non-empty strings, naming at least one configured audience.
func (ti *trustedIssuer) checkAudience(aud any) error {
	var values []string
	switch a := aud.(type) {
	case nil:
		return errors.New("token has no aud")
	case string:
		values = []string{a}
	case []any:
		if len(a) == 0 {
			return errors.New("token aud is an empty list")
		}
		for _, v := range a {
			s, ok := v.(string)
			if !ok {
				return errors.New("token aud has a value that is not a string")
			}
			values = append(values, s)
		}
	default:
		return errors.New("token aud is neither a string nor a list of strings")
	}
	match := false
	for _, v := range values {
		if v == "" {
			return errors.New("token aud has an empty value")
		}
		match = match || ti.audiences[v]
	}
	if !match {
		return fmt.Errorf("token aud is not one of issuer %q's audiences", ti.cfg.Name)
	}
	return nil
}

// quoteUntrusted renders an untrusted value for an error message, truncated
// (as broker's error messages do).
func quoteUntrusted(s string) string {
	if len(s) > maxQuotedLen {
		return fmt.Sprintf("%q...", s[:maxQuotedLen])
	}
	return fmt.Sprintf("%q", s)
}
