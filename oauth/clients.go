package oauth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/broker"
)

// ClientIssuer is the issuer name of every principal authenticated by a
// client assertion: templates admit registered clients with
// `principals: [{issuer: clients, condition: 'claims.sub == "<client id>"'}]`,
// and incident controls name them under it.
const ClientIssuer = "clients"

// ClientAssertionType is the client_assertion_type of private_key_jwt
// (RFC 7523 section 2.2).
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// DefaultMaxAssertionLife is the longest an assertion may live from now on
// (its exp), unless Config says otherwise.
const DefaultMaxAssertionLife = 5 * time.Minute

// SigningAlgs are the algorithms accepted on client assertions.
var SigningAlgs = []string{"EdDSA", "ES256", "ES384", "RS256", "PS256"}

// Client is an agent registered to use client credentials: its public
// keys and the templates it may declare tasks under.
type Client struct {
	ID        string
	Keys      jose.JSONWebKeySet
	Templates []string
}

// validate reports what is wrong with a registration.
func (c Client) validate() error {
	var errs []error
	if c.ID == "" || strings.ContainsFunc(c.ID, func(r rune) bool { return r <= 0x20 || r == 0x7f }) {
		errs = append(errs, fmt.Errorf("client id %q must be non-empty, without spaces or control characters", c.ID))
	}
	if len(c.Keys.Keys) == 0 {
		errs = append(errs, fmt.Errorf("client %q has no public key", c.ID))
	}
	for i, k := range c.Keys.Keys {
		if !k.Valid() || !k.IsPublic() {
			errs = append(errs, fmt.Errorf("client %q: key %d must be a valid public key", c.ID, i))
		}
	}
	if len(c.Templates) == 0 {
		errs = append(errs, fmt.Errorf("client %q may use no template: list at least one", c.ID))
	}
	return errors.Join(errs...)
}

// ClientVerifier authenticates private_key_jwt client assertions (RFC 7523
// sections 2.2 and 3): iss and sub are a registered client's id, the
// signature is by one of its keys, aud names Valet's issuer or token
// endpoint, exp is present and at most the maximum life away, and the jti
// was never seen before (kept by the Limiter until exp). It implements
// broker.Authenticator; the Principal is Issuer ClientIssuer, Subject the
// client id. It is safe for concurrent use.
type ClientVerifier struct {
	clients  map[string]Client
	audience []string
	maxLife  time.Duration
	once     broker.Limiter
	now      func() time.Time
}

// NewClientVerifier checks the registrations and builds a verifier.
// audiences are the values an assertion's aud may name (Valet's issuer URL
// and token endpoint URL); once keeps the jtis seen.
func NewClientVerifier(clients []Client, audiences []string, maxLife time.Duration, once broker.Limiter, now func() time.Time) (*ClientVerifier, error) {
	if once == nil {
		return nil, errors.New("oauth: the replay store cannot be nil")
	}
	if len(audiences) == 0 {
		return nil, errors.New("oauth: client assertions need an audience")
	}
	v := &ClientVerifier{clients: make(map[string]Client, len(clients)), audience: audiences, maxLife: maxLife, once: once, now: now}
	if v.maxLife <= 0 {
		v.maxLife = DefaultMaxAssertionLife
	}
	if v.now == nil {
		v.now = time.Now
	}
	var errs []error
	for _, c := range clients {
		if err := c.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := v.clients[c.ID]; dup {
			errs = append(errs, fmt.Errorf("client %q is registered twice", c.ID))
		}
		v.clients[c.ID] = c
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("oauth: %w", err)
	}
	return v, nil
}

// Client returns a registered client.
func (v *ClientVerifier) Client(id string) (Client, bool) { c, ok := v.clients[id]; return c, ok }

// Authenticate verifies a client assertion. An error wrapping
// broker.ErrUnavailable means the replay store could not be asked.
func (v *ClientVerifier) Authenticate(ctx context.Context, raw string) (broker.Principal, error) {
	var claims jwt.RegisteredClaims
	var client Client
	_, err := jwt.ParseWithClaims(raw, &claims, func(t *jwt.Token) (any, error) {
		iss, _ := t.Claims.GetIssuer()
		sub, _ := t.Claims.GetSubject()
		c, ok := v.clients[iss]
		if !ok || sub != iss {
			return nil, errors.New("iss is not a registered client, or sub is not iss")
		}
		client = c
		kid, _ := t.Header["kid"].(string)
		var keys jwt.VerificationKeySet
		for _, k := range c.Keys.Keys {
			if kid == "" || k.KeyID == kid {
				keys.Keys = append(keys.Keys, k.Key)
			}
		}
		if len(keys.Keys) == 0 {
			return nil, errors.New("no key of the client has that kid")
		}
		return keys, nil
	}, jwt.WithValidMethods(SigningAlgs), jwt.WithAudience(v.audience...), jwt.WithExpirationRequired(), jwt.WithIssuedAt(),
		jwt.WithTimeFunc(v.now), jwt.WithLeeway(30*time.Second))
	if err != nil {
		return broker.Principal{}, fmt.Errorf("verifying client assertion: %w", err)
	}
	now := v.now()
	exp := claims.ExpiresAt.Time
	switch {
	case exp.After(now.Add(v.maxLife)):
		return broker.Principal{}, fmt.Errorf("client assertion expires %s from now, beyond the maximum of %s", exp.Sub(now).Round(time.Second), v.maxLife)
	case claims.ID == "":
		return broker.Principal{}, errors.New("client assertion has no jti")
	}
	if err := once(ctx, v.once, "oauth:client:"+client.ID+":"+claims.ID, exp); err != nil {
		return broker.Principal{}, err
	}
	return broker.Principal{
		Issuer:      ClientIssuer,
		Subject:     client.ID,
		Claims:      map[string]any{"iss": client.ID, "sub": client.ID, "jti": claims.ID, "client_id": client.ID},
		TokenExpiry: exp,
	}, nil
}

// errReplayed is the cause of a refused assertion seen before.
var errReplayed = errors.New("assertion jti was used before")

// once records key until the given time and fails unless this was its
// first use.
func once(ctx context.Context, l broker.Limiter, key string, until time.Time) error {
	lctx, cancel := broker.LedgerCtx(ctx)
	defer cancel()
	first, err := l.Once(lctx, key, until)
	switch {
	case err != nil:
		return fmt.Errorf("recording assertion jti: %w: %w", broker.ErrUnavailable, err)
	case !first:
		return errReplayed
	}
	return nil
}

// MaxBearerAssertionLife bounds how far away a jwt-bearer assertion's exp
// may be (RFC 7523 section 3, item 4): workload identity tokens live
// minutes to hours, and the replay store keeps each jti until its exp.
const MaxBearerAssertionLife = 24 * time.Hour

// AssertionGuard is the jwt-bearer grant's Authenticator (RFC 7523 section
// 2.1): Identity verifies the assertion as the agent's identity token, its
// exp must be at most MaxLife (default MaxBearerAssertionLife) away, then
// its jti (or, for a token without one, its SHA-256) must be new: an
// assertion is used once within its lifetime.
type AssertionGuard struct {
	Identity broker.Authenticator
	Once     broker.Limiter
	MaxLife  time.Duration
	Now      func() time.Time
}

// Authenticate implements broker.Authenticator.
func (g AssertionGuard) Authenticate(ctx context.Context, raw string) (broker.Principal, error) {
	p, err := g.Identity.Authenticate(ctx, raw)
	if err != nil {
		return p, err
	}
	id, _ := p.Claims["jti"].(string)
	if id == "" {
		sum := sha256.Sum256([]byte(raw))
		id = "sha256:" + hex.EncodeToString(sum[:])
	}
	until := p.TokenExpiry
	if until.IsZero() {
		return broker.Principal{}, errors.New("assertion has no exp")
	}
	now, maxLife := time.Now, g.MaxLife
	if g.Now != nil {
		now = g.Now
	}
	if maxLife <= 0 {
		maxLife = MaxBearerAssertionLife
	}
	if life := until.Sub(now()); life > maxLife {
		return broker.Principal{}, fmt.Errorf("assertion expires %s from now, beyond the maximum of %s", life.Round(time.Second), maxLife)
	}
	if err := once(ctx, g.Once, "oauth:assertion:"+p.IssuerURL+":"+id, until); err != nil {
		return broker.Principal{}, err
	}
	return p, nil
}

// verified is an Authenticator that hands Service.DeclareWith a principal
// the token endpoint has already authenticated.
type verified broker.Principal

func (v verified) Authenticate(context.Context, string) (broker.Principal, error) {
	return broker.Principal(v), nil
}

// allows reports whether the client may use template.
func (c Client) allows(template string) bool { return slices.Contains(c.Templates, template) }
