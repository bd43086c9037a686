package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/oauth"
)

// OAuthConfig is the token endpoint's `oauth` block. The jwt-bearer grant
// needs nothing here (its assertion is an identity token of a trusted
// issuer); clients registers the agents that use client credentials with a
// private_key_jwt assertion.
type OAuthConfig struct {
	// MaxAssertionLife bounds a client assertion's exp from now (default 5m).
	MaxAssertionLife Duration            `yaml:"max_assertion_life"`
	Clients          []OAuthClientConfig `yaml:"clients"`
	// DPoPNonce requires server nonces in DPoP proofs at the token
	// endpoint (RFC 9449 section 8).
	DPoPNonce bool `yaml:"dpop_nonce"`
}

// OAuthClientConfig registers one agent: its id (the iss and sub of its
// assertions), its public keys (a JWKS or a single JWK, in a file) and the
// templates it may use.
type OAuthClientConfig struct {
	ID        string   `yaml:"id"`
	JWKSFile  string   `yaml:"jwks_file"`
	Templates []string `yaml:"templates"`
}

// validateOAuth reports every problem of the oauth block.
func (c *Config) validateOAuth() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.OAuth.MaxAssertionLife < 0 || c.OAuth.MaxAssertionLife > Duration(time.Hour) {
		bad("oauth.max_assertion_life", "must be between 0 (the default, 5m) and 1h")
	}
	for i, cl := range c.OAuth.Clients {
		field := fmt.Sprintf("oauth.clients[%d]", i)
		if cl.ID == "" {
			bad(field+".id", "is required")
		}
		if cl.JWKSFile == "" {
			bad(field+".jwks_file", "is required")
		}
		if len(cl.Templates) == 0 {
			bad(field+".templates", "list at least one template")
		}
	}
	if len(c.OAuth.Clients) > 0 && slices.ContainsFunc(c.Issuers, func(is IssuerEntry) bool { return is.Name == oauth.ClientIssuer }) {
		bad("issuers", "the name %q is taken by the oauth clients", oauth.ClientIssuer)
	}
	return errs
}

// oauthOptions loads the registered clients' keys.
func (c *Config) oauthOptions() (*server.OAuthOptions, error) {
	o := &server.OAuthOptions{MaxAssertionLife: time.Duration(c.OAuth.MaxAssertionLife), DPoPNonce: c.OAuth.DPoPNonce}
	var errs []error
	for i, cl := range c.OAuth.Clients {
		keys, err := readJWKS(c.path(cl.JWKSFile))
		if err != nil {
			errs = append(errs, fmt.Errorf("oauth.clients[%d].jwks_file: %w", i, err))
			continue
		}
		o.Clients = append(o.Clients, oauth.Client{ID: cl.ID, Keys: keys, Templates: cl.Templates})
	}
	return o, errors.Join(errs...)
}

// agentIssuerNames are the trusted issuers' names and, with registered
// oauth clients, the name their principals carry.
func (c *Config) agentIssuerNames(names []string) []string {
	if len(c.OAuth.Clients) == 0 {
		return names
	}
	return append(slices.Clone(names), oauth.ClientIssuer)
}

// readJWKS reads a JWK Set, or a single JWK, of public keys.
func readJWKS(path string) (jose.JSONWebKeySet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return jose.JSONWebKeySet{}, err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(data, &set); err == nil && len(set.Keys) > 0 {
		return set, nil
	}
	var key jose.JSONWebKey
	if err := json.Unmarshal(data, &key); err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("%s is neither a JWK Set nor a JWK: %w", path, err)
	}
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{key}}, nil
}
