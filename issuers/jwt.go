package issuers

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/broker"
)

// tokenType is the typ header of every task token (RFC 9068 section 2.1).
const tokenType = "at+jwt"

// DefaultMaxTokenBytes is the longest token Verify will parse when
// JWTConfig.MaxTokenBytes is zero.
const DefaultMaxTokenBytes = 8192

// ErrInvalidToken is wrapped by every error Verify returns. Any error from
// Verify means the token must be refused.
var ErrInvalidToken = errors.New("invalid task token")

// SigningKey is one key of the task-token key set.
type SigningKey struct {
	// KID names the key in the JWKS and in the kid header. Empty means the
	// RFC 7638 thumbprint of the public key (see KeyID).
	KID string
	// Private signs. It is nil for a key that is only published: a retired
	// key whose tokens may still be live, or the next key, published ahead
	// of its rotation so that caches pick it up.
	Private crypto.Signer
	// Public verifies. It is derived from Private when nil; when both are
	// set they must match.
	Public crypto.PublicKey
}

// JWTConfig configures a JWT issuer.
type JWTConfig struct {
	// Issuer is Valet's public URL, the iss of every task token.
	Issuer string
	// Algorithm is "EdDSA" (the default when empty) or "ES256". Every key
	// must be of the matching type.
	Algorithm string
	// Keys are all published in the JWKS and all verify.
	Keys []SigningKey
	// ActiveKID names the key that signs; it must have a Private key. It may
	// be empty when exactly one key has a Private key.
	ActiveKID string
	// MaxTokenBytes caps the length of a token Verify will parse.
	// Zero means DefaultMaxTokenBytes.
	MaxTokenBytes int
}

// JWT mints and verifies Valet's task tokens: RFC 9068 JWT access tokens,
// bound to one task and expiring at its deadline. It is safe for concurrent
// use.
type JWT struct {
	issuer   string
	alg      string
	method   jwt.SigningMethod
	kid      string        // the active key's id
	signer   crypto.Signer // the active key
	keys     map[string]crypto.PublicKey
	jwks     []byte
	maxBytes int
	now      func() time.Time
	parser   *jwt.Parser
}

var _ broker.TaskTokens = (*JWT)(nil)

// NewJWT checks cfg and builds the issuer. It reports every problem with cfg
// at once: the issuer URL must be an absolute http(s) URL with no query or
// fragment, the algorithm supported, key ids unique, every key of the type
// the algorithm needs, and the active key present with a private key.
func NewJWT(cfg JWTConfig, now func() time.Time) (*JWT, error) {
	var errs []error
	problem := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf(format, args...))
	}
	if now == nil {
		problem("now cannot be nil")
	}
	if err := checkIssuerURL(cfg.Issuer); err != nil {
		errs = append(errs, err)
	}

	alg := cfg.Algorithm
	if alg == "" {
		alg = AlgEdDSA
	}
	var method jwt.SigningMethod
	switch alg {
	case AlgEdDSA:
		method = jwt.SigningMethodEdDSA
	case AlgES256:
		method = jwt.SigningMethodES256
	default:
		problem("algorithm %q is not supported (want %s or %s)", cfg.Algorithm, AlgEdDSA, AlgES256)
	}

	maxBytes := cfg.MaxTokenBytes
	switch {
	case maxBytes == 0:
		maxBytes = DefaultMaxTokenBytes
	case maxBytes < 0:
		problem("max token bytes must not be negative, got %d", maxBytes)
	}

	if len(cfg.Keys) == 0 {
		problem("no signing keys configured")
	}
	keys := make(map[string]crypto.PublicKey, len(cfg.Keys))
	signers := make(map[string]crypto.Signer)
	jwks := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(cfg.Keys))}
	for i, k := range cfg.Keys {
		pub, kid, err := resolveKey(k, alg, method != nil)
		if err != nil {
			problem("keys[%d]: %w", i, err)
			continue
		}
		if _, dup := keys[kid]; dup {
			problem("keys[%d]: kid %q is used by more than one key", i, kid)
			continue
		}
		keys[kid] = pub
		if k.Private != nil {
			signers[kid] = k.Private
		}
		jwks.Keys = append(jwks.Keys, jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: alg, Use: "sig"})
	}

	active := cfg.ActiveKID
	if active == "" && len(signers) == 1 {
		for kid := range signers {
			active = kid
		}
	}
	var signer crypto.Signer
	switch {
	case active == "" && len(signers) == 0:
		problem("no key has a private key to sign with")
	case active == "":
		problem("active kid must be set when several keys have a private key")
	case signers[active] != nil:
		signer = signers[active]
	case keys[active] != nil:
		problem("active kid %q has no private key", active)
	default:
		// The key may be missing because it failed its own checks above;
		// say so only when it is not in the configuration at all.
		if !slices.ContainsFunc(cfg.Keys, func(k SigningKey) bool { return k.KID == active }) {
			problem("active kid %q is not among the configured keys", active)
		}
	}

	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("configuring task-token issuer: %w", err)
	}

	set, err := json.Marshal(jwks)
	if err != nil {
		return nil, fmt.Errorf("configuring task-token issuer: encoding JWKS: %w", err)
	}
	return &JWT{
		issuer:   cfg.Issuer,
		alg:      alg,
		method:   method,
		kid:      active,
		signer:   signer,
		keys:     keys,
		jwks:     set,
		maxBytes: maxBytes,
		now:      now,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{alg}),
			jwt.WithIssuer(cfg.Issuer),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithTimeFunc(now),
			// Strict base64 refuses non-zero padding bits, so a token has
			// exactly one spelling that verifies.
			jwt.WithStrictDecoding(),
		),
	}, nil
}

func checkIssuerURL(iss string) error {
	u, err := url.Parse(iss)
	switch {
	case iss == "":
		return errors.New("issuer URL is required")
	case err != nil:
		return fmt.Errorf("issuer URL: %w", err)
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Errorf("issuer URL %q must be an absolute http(s) URL", iss)
	case u.Host == "":
		return fmt.Errorf("issuer URL %q has no host", iss)
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return fmt.Errorf("issuer URL %q must not have a query or fragment", iss)
	}
	return nil
}

// resolveKey derives k's public key and kid and checks that its types suit
// alg. algKnown is false when alg itself is invalid; the type checks are then
// skipped, since that problem is already reported.
func resolveKey(k SigningKey, alg string, algKnown bool) (crypto.PublicKey, string, error) {
	pub := k.Public
	if k.Private != nil {
		derived := k.Private.Public()
		if pub == nil {
			pub = derived
		} else if eq, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(derived) {
			return nil, "", errors.New("public key does not match private key")
		}
	}
	if pub == nil {
		return nil, "", errors.New("neither a private nor a public key is set")
	}
	var errs []error
	if algKnown {
		if err := checkKeyType(alg, pub, k.Private); err != nil {
			errs = append(errs, err)
		}
	}
	kid := k.KID
	if kid == "" {
		var err error
		if kid, err = KeyID(pub); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, "", err
	}
	return pub, kid, nil
}

func checkKeyType(alg string, pub crypto.PublicKey, priv crypto.Signer) error {
	switch alg {
	case AlgEdDSA:
		if _, ok := pub.(ed25519.PublicKey); !ok {
			return fmt.Errorf("%s needs an Ed25519 key, got %T", alg, pub)
		}
	case AlgES256:
		p, ok := pub.(*ecdsa.PublicKey)
		if !ok || p.Curve != elliptic.P256() {
			return fmt.Errorf("%s needs an ECDSA P-256 key, got %s", alg, describeKey(pub))
		}
		// golang-jwt signs ES256 only with an in-memory key.
		if _, ok := priv.(*ecdsa.PrivateKey); priv != nil && !ok {
			return fmt.Errorf("%s signs only with an *ecdsa.PrivateKey, got %T", alg, priv)
		}
	}
	return nil
}

func describeKey(pub crypto.PublicKey) string {
	if p, ok := pub.(*ecdsa.PublicKey); ok && p.Curve != nil {
		return "ECDSA " + p.Curve.Params().Name
	}
	return fmt.Sprintf("%T", pub)
}

// Kind reports broker.KindJWT.
func (j *JWT) Kind() broker.CredentialKind { return broker.KindJWT }

// Algorithms lists the signing algorithms of task tokens, for the
// authorization server metadata (RFC 8414).
func (j *JWT) Algorithms() []string { return []string{j.alg} }

// JWKS returns the JSON Web Key Set of every configured key, active,
// retired and upcoming, each with its kid, alg and use "sig". The caller may
// keep or change the slice.
func (j *JWT) JWKS() []byte { return bytes.Clone(j.jwks) }

// taskClaims is the payload of a task token.
type taskClaims struct {
	jwt.RegisteredClaims
	ClientID    string   `json:"client_id,omitempty"`
	Scope       string   `json:"scope,omitempty"`
	TaskID      string   `json:"task_id"`
	Template    string   `json:"template"`
	Tools       []string `json:"tools"`
	ActionTools []string `json:"action_tools,omitempty"`
	AgentIssuer string   `json:"agent_issuer"`
	// Act and Cnf are set for delegated, on-behalf-of and DPoP-bound tasks
	// (see jwt_agent.go).
	Act *actClaim `json:"act,omitempty"`
	Cnf *cnfClaim `json:"cnf,omitempty"`
}

// mintClaims writes aud as an array whatever jwt.MarshalSingleStringAsArray
// says: its aud field, being shallower, hides the embedded one.
type mintClaims struct {
	taskClaims
	Audience []string `json:"aud"`
}

// Mint issues one task token for task: an RFC 9068 access token whose
// client_id is the agent, whose subject is the agent or, when set,
// task.Subject (the user or root agent the task acts for, with the agent in
// act), whose audiences, scopes and tools are the grant's, and which
// expires at the task's deadline (rounded down to the second), never later.
// It refuses a task whose deadline has passed, or is
// less than a second away, and a grant with no audience.
func (j *JWT) Mint(ctx context.Context, task broker.Task, p broker.Principal, g broker.Grant) ([]broker.Minted, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("minting task token: %w", err)
	}
	now := j.now()
	iat := jwt.NewNumericDate(now)
	exp := jwt.NewNumericDate(task.Deadline)
	switch {
	case task.ID == "":
		return nil, errors.New("minting task token: task has no id")
	case task.Agent == "":
		return nil, errors.New("minting task token: task has no agent")
	case len(g.Audiences) == 0 || slices.Contains(g.Audiences, ""):
		return nil, errors.New("minting task token: the grant must name at least one audience, and no empty one")
	case !now.Before(task.Deadline):
		return nil, fmt.Errorf("minting task token: task deadline %s has passed", task.Deadline.Format(time.RFC3339))
	case !exp.After(iat.Time):
		return nil, fmt.Errorf("minting task token: task deadline %s is less than a second away", task.Deadline.Format(time.RFC3339Nano))
	}

	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand, Go 1.24+)
	jti := base64.RawURLEncoding.EncodeToString(b[:])

	claims := mintClaims{
		taskClaims: taskClaims{
			RegisteredClaims: jwt.RegisteredClaims{
				Issuer:    j.issuer,
				Subject:   tokenSubject(task),
				ExpiresAt: exp,
				NotBefore: iat,
				IssuedAt:  iat,
				ID:        jti,
			},
			ClientID:    task.Agent,
			Scope:       strings.Join(g.Scopes, " "),
			TaskID:      task.ID,
			Template:    task.Template,
			Tools:       append([]string{}, g.Tools...), // [] rather than null
			ActionTools: slices.Clone(g.ActionTools),
			AgentIssuer: p.Issuer,
			Act:         actChain(task.Act),
			Cnf:         cnf(task.JKT),
		},
		Audience: slices.Clone(g.Audiences),
	}
	tok := jwt.NewWithClaims(j.method, claims)
	tok.Header["typ"] = tokenType
	tok.Header["kid"] = j.kid
	signed, err := j.sign(tok)
	if err != nil {
		return nil, fmt.Errorf("minting task token: %w", err)
	}

	return []broker.Minted{{
		Credential: broker.Credential{
			ID:        jti,
			Kind:      broker.KindJWT,
			TaskID:    task.ID,
			IssuedAt:  now,
			ExpiresAt: exp.Time,
		},
		Material: map[string]any{
			"type":         "jwt",
			"access_token": signed,
			"token_type":   "Bearer",
			"expires_at":   exp.Time.UTC().Format(time.RFC3339),
		},
	}}, nil
}

// sign signs tok with the active key. ES256 signatures are put in low-S form
// so that, as with Ed25519, each token has exactly one valid signature.
func (j *JWT) sign(tok *jwt.Token) (string, error) {
	signing, err := tok.SigningString()
	if err != nil {
		return "", fmt.Errorf("encoding token: %w", err)
	}
	sig, err := j.method.Sign(signing, j.signer)
	if err != nil {
		return "", fmt.Errorf("signing token: %w", err)
	}
	if j.alg == AlgES256 {
		lowS(sig)
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

var (
	p256N     = elliptic.P256().Params().N
	p256HalfN = new(big.Int).Rsh(p256N, 1)
)

// lowS rewrites an r||s P-256 signature with s > n/2 to use n-s, which
// verifies just the same.
func lowS(sig []byte) {
	if len(sig) != 64 {
		return
	}
	s := new(big.Int).SetBytes(sig[32:])
	if s.Cmp(p256HalfN) > 0 {
		s.Sub(p256N, s).FillBytes(sig[32:])
	}
}

func highS(sig []byte) bool {
	return len(sig) != 64 || new(big.Int).SetBytes(sig[32:]).Cmp(p256HalfN) > 0
}

// Revoke does nothing and returns nil: a JWT cannot be killed at its source.
// Until it expires, a revoked task token is refused through the ledger's deny
// list, which every consumer of task tokens must check (Verify does not).
func (j *JWT) Revoke(ctx context.Context, c broker.Credential) error { return nil }

// Verify checks a task token's length, signature (by a configured key named
// by its kid; jwk, jku and x5u headers are ignored), algorithm, typ
// "at+jwt", issuer, expiry, iat and nbf, and that it carries a jti, task_id,
// sub and aud, and returns its claims. It never consults the ledger: the
// caller checks the deny list. Every error wraps ErrInvalidToken, and any
// error at all means the token is refused.
func (j *JWT) Verify(raw string) (broker.TaskClaims, error) {
	if len(raw) > j.maxBytes {
		return broker.TaskClaims{}, fmt.Errorf("%w: token is %d bytes, more than the %d allowed", ErrInvalidToken, len(raw), j.maxBytes)
	}
	return j.verifyWith(j.parser, raw)
}

// verifyWith is Verify with the given parser (jwt_late.go passes one with
// a leeway on exp).
func (j *JWT) verifyWith(parser *jwt.Parser, raw string) (broker.TaskClaims, error) {
	var c taskClaims
	tok, err := parser.ParseWithClaims(raw, &c, j.verificationKey)
	if err != nil {
		return broker.TaskClaims{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	var missing []string
	for _, f := range []struct{ name, value string }{{"jti", c.ID}, {"task_id", c.TaskID}, {"sub", c.Subject}} {
		if f.value == "" {
			missing = append(missing, f.name)
		}
	}
	if len(c.Audience) == 0 || slices.Contains(c.Audience, "") {
		missing = append(missing, "aud")
	}
	switch {
	case !tok.Valid:
		return broker.TaskClaims{}, fmt.Errorf("%w: token is not valid", ErrInvalidToken)
	case j.alg == AlgES256 && highS(tok.Signature):
		return broker.TaskClaims{}, fmt.Errorf("%w: ES256 signature is not in low-S form", ErrInvalidToken)
	case len(missing) > 0:
		return broker.TaskClaims{}, fmt.Errorf("%w: missing or empty claims: %s", ErrInvalidToken, strings.Join(missing, ", "))
	case c.IssuedAt == nil:
		return broker.TaskClaims{}, fmt.Errorf("%w: missing iat", ErrInvalidToken)
	case !c.Act.valid():
		return broker.TaskClaims{}, fmt.Errorf("%w: act claim has an empty sub or is nested deeper than %d", ErrInvalidToken, maxActDepth)
	case c.Cnf != nil && c.Cnf.JKT == "":
		return broker.TaskClaims{}, fmt.Errorf("%w: cnf claim without jkt", ErrInvalidToken)
	}
	return broker.TaskClaims{
		ID:          c.ID,
		TaskID:      c.TaskID,
		Subject:     c.Subject,
		Template:    c.Template,
		Tools:       c.Tools,
		ActionTools: c.ActionTools,
		Audience:    c.Audience,
		Scope:       c.Scope,
		ClientID:    c.ClientID,
		IssuedAt:    c.IssuedAt.UTC(),
		ExpiresAt:   c.ExpiresAt.UTC(),
		Act:         c.Act.chain(),
		JKT:         c.Cnf.jkt(),
		AgentIssuer: c.AgentIssuer,
	}, nil
}

// verificationKey is the jwt.Keyfunc of Verify. It checks the header before
// any signature work and picks the key only from the configuration.
func (j *JWT) verificationKey(t *jwt.Token) (any, error) {
	if typ, _ := t.Header["typ"].(string); typ != tokenType {
		return nil, fmt.Errorf("typ header must be %q", tokenType)
	}
	if _, ok := t.Header["crit"]; ok {
		return nil, errors.New("crit header is not supported")
	}
	kid, _ := t.Header["kid"].(string)
	if kid == "" {
		return nil, errors.New("kid header is missing or not a string")
	}
	pub, ok := j.keys[kid]
	if !ok {
		return nil, fmt.Errorf("kid %.64q is not a configured key", kid)
	}
	return pub, nil
}
