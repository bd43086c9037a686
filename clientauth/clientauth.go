// Package clientauth authenticates tool servers as callers of
// introspection, RFC 7009 revocation, the revocation feed, action
// consumption and late tool-call reports: by a configured client secret,
// or by an identity token that one of the configured rules admits.
package clientauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/throttle"
)

// Client is a confidential client (a tool server, or an approver in
// package stepup) that authenticates with a secret. Only the SHA-256 of
// its secret is kept.
type Client struct {
	ID           string
	SecretSHA256 [32]byte
}

// Rule admits an identity token as a caller of introspection and
// revocation: a tool server that proves itself with its workload identity
// instead of a client secret. A token is admitted when it comes from
// Issuer, its aud names Audience, its subject (the issuer's subject claim)
// is one of Subjects when Subjects is set, and every claim in Claims has
// exactly the given string value. A rule needs Subjects or Claims: the
// issuer and audience alone are what every agent's identity token carries.
type Rule struct {
	// Issuer is the configured name of a trusted issuer.
	Issuer string
	// Audience must be one of the token's aud values.
	Audience string
	// Subjects are the admitted subjects; empty means any that Claims admits.
	Subjects []string
	// Claims are claim names and the exact string value each must have.
	Claims map[string]string
}

func (r Rule) validate() error {
	var errs []error
	if r.Issuer == "" {
		errs = append(errs, errors.New("issuer is required"))
	}
	if r.Audience == "" {
		errs = append(errs, errors.New("audience is required"))
	}
	if len(r.Subjects) == 0 && len(r.Claims) == 0 {
		errs = append(errs, errors.New("subjects or claims are required: an issuer and audience alone admit every agent"))
	}
	for _, s := range r.Subjects {
		if strings.TrimSpace(s) == "" {
			errs = append(errs, errors.New("subjects has an empty value"))
		}
	}
	for k, v := range r.Claims {
		if strings.TrimSpace(k) == "" || v == "" {
			errs = append(errs, errors.New("claims has an empty name or value"))
		}
	}
	return errors.Join(errs...)
}

func (r Rule) clone() Rule {
	r.Subjects = slices.Clone(r.Subjects)
	r.Claims = maps.Clone(r.Claims)
	return r
}

// admits reports whether the verified principal p satisfies the rule.
func (r Rule) admits(p broker.Principal) bool {
	if p.Issuer != r.Issuer || !audienceHas(p.Claims["aud"], r.Audience) {
		return false
	}
	if len(r.Subjects) > 0 && !slices.Contains(r.Subjects, p.Subject) {
		return false
	}
	for k, want := range r.Claims {
		if got, ok := p.Claims[k].(string); !ok || got != want {
			return false
		}
	}
	return len(r.Subjects) > 0 || len(r.Claims) > 0
}

// audienceHas reports whether a verified aud claim (a string or a list of
// strings) names want.
func audienceHas(aud any, want string) bool {
	switch a := aud.(type) {
	case string:
		return a == want
	case []any:
		for _, v := range a {
			if s, ok := v.(string); ok && s == want {
				return true
			}
		}
	}
	return false
}

// Identity verifies an identity token and answers any failure with the
// fixed 401 (or the 503 of an issuer that cannot be reached), the reason
// only logged: (*broker.Service).Authenticate does. It must be safe for
// concurrent use.
type Identity interface {
	Authenticate(ctx context.Context, raw string) (broker.Principal, error)
}

// Config holds an Authorizer's dependencies. Identity is required.
type Config struct {
	// Clients may authenticate with a client secret.
	Clients []Client
	// Rules admit identity tokens (of tool servers, not agents). Empty
	// means none.
	Rules    []Rule
	Identity Identity
	// Now is the clock of the throttle (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Authorizer authenticates tool servers. It is safe for concurrent use.
type Authorizer struct {
	clients  []Client
	rules    []Rule
	identity Identity
	throttle *throttle.Throttle // failed client-secret attempts
	now      func() time.Time
	log      *slog.Logger
}

// New checks cfg and builds an Authorizer.
func New(cfg Config) (*Authorizer, error) {
	if cfg.Identity == nil {
		return nil, errors.New("clientauth: identity cannot be nil")
	}
	a := &Authorizer{clients: slices.Clone(cfg.Clients), identity: cfg.Identity, now: cfg.Now, log: cfg.Logger,
		rules: make([]Rule, 0, len(cfg.Rules))}
	for i, r := range cfg.Rules {
		if err := r.validate(); err != nil {
			return nil, fmt.Errorf("clientauth: introspection rule %d: %w", i, err)
		}
		a.rules = append(a.rules, r.clone())
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	// Each configured client id keeps its own throttle entry, with its
	// realm (the approvers have a throttle of their own, in stepup).
	known := make([]string, len(a.clients))
	for i, c := range a.clients {
		known[i] = "client:" + c.ID
	}
	a.throttle = throttle.New(known)
	return a, nil
}

// ClientIDs are the ids of the configured clients.
func (a *Authorizer) ClientIDs() []string {
	ids := make([]string, len(a.clients))
	for i, c := range a.clients {
		ids[i] = c.ID
	}
	return ids
}

// Authorize checks a caller: a configured client secret (when clientID is
// set), or an identity token that one of the rules admits (issuer,
// audience and subject rule, so an agent's own identity token is never
// enough). It returns a name for the audit trail. A wrong secret is a 401
// saying the client credentials were wrong; too many of them for one
// client id, a 429 for every attempt with that id until the throttle's
// window ends.
func (a *Authorizer) Authorize(ctx context.Context, clientID, secret, bearer string) (string, error) {
	if clientID != "" {
		key := "client:" + clientID
		if wait := a.throttle.Wait(key, a.now()); wait > 0 {
			a.log.WarnContext(ctx, "client authentication throttled", "client_id", broker.QuoteUntrusted(clientID))
			return "", broker.Throttled(wait)
		}
		sum := sha256.Sum256([]byte(secret))
		for _, c := range a.clients {
			if subtle.ConstantTimeCompare([]byte(c.ID), []byte(clientID)) == 1 && subtle.ConstantTimeCompare(c.SecretSHA256[:], sum[:]) == 1 {
				a.throttle.Succeed(key)
				return "client:" + c.ID, nil
			}
		}
		a.throttle.Fail(key, a.now())
		a.log.WarnContext(ctx, "client authentication failed", "client_id", broker.QuoteUntrusted(clientID))
		return "", &broker.Error{Code: broker.CodeUnauthenticated, Message: "invalid client credentials",
			Err: errors.New("bad client credentials")}
	}
	p, err := a.identity.Authenticate(ctx, bearer)
	if err != nil {
		return "", err
	}
	for _, r := range a.rules {
		if r.admits(p) {
			return p.Issuer + ":" + p.Subject, nil
		}
	}
	return "", &broker.Error{Code: broker.CodeForbidden, Message: "this identity may not introspect or revoke tokens",
		Err: fmt.Errorf("no introspection rule admits %s:%s", p.Issuer, p.Subject)}
}
