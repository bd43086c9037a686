package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/revocation"

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
	// Interactive turns on the authorization code grant with PKCE
	// (GET /v1/authorize) for MCP hosts acting for a person.
	Interactive *OAuthInteractiveConfig `yaml:"interactive"`
}

// OAuthInteractiveConfig is oauth.interactive: where people sign in
// (upstream: one of the trusted issuers, with Valet registered there as
// client_id, which the issuer's audiences must list), the configured
// public clients, and whether clients may describe themselves by a Client
// ID Metadata Document (an https client_id URL).
type OAuthInteractiveConfig struct {
	Upstream struct {
		Issuer          string   `yaml:"issuer"`
		ClientID        string   `yaml:"client_id"`
		ClientSecretEnv string   `yaml:"client_secret_env"`
		Scopes          []string `yaml:"scopes"`
	} `yaml:"upstream"`
	Clients                   []OAuthPublicClientConfig `yaml:"clients"`
	ClientIDMetadataDocuments bool                      `yaml:"client_id_metadata_documents"`
	CodeTTL                   Duration                  `yaml:"code_ttl"`
	ConsentTTL                Duration                  `yaml:"consent_ttl"`
}

// OAuthPublicClientConfig is one configured interactive client.
type OAuthPublicClientConfig struct {
	ID           string   `yaml:"id"`
	Name         string   `yaml:"name"`
	RedirectURIs []string `yaml:"redirect_uris"`
	Templates    []string `yaml:"templates"`
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
	if in := c.OAuth.Interactive; in != nil {
		if in.Upstream.Issuer == "" || !slices.ContainsFunc(c.Issuers, func(is IssuerEntry) bool { return is.IssuerURL == in.Upstream.Issuer }) {
			bad("oauth.interactive.upstream.issuer", "must be the issuer_url of one of the trusted issuers")
		}
		if in.Upstream.ClientID == "" {
			bad("oauth.interactive.upstream.client_id", "is required: Valet's client id at the upstream issuer")
		}
		if len(in.Clients) == 0 && !in.ClientIDMetadataDocuments {
			bad("oauth.interactive", "list clients or turn on client_id_metadata_documents")
		}
		if in.CodeTTL < 0 || in.CodeTTL > Duration(10*time.Minute) {
			bad("oauth.interactive.code_ttl", "must be between 0 (the default, 60s) and 10m")
		}
		if in.ConsentTTL < 0 {
			bad("oauth.interactive.consent_ttl", "cannot be negative")
		}
		for i, cl := range in.Clients {
			field := fmt.Sprintf("oauth.interactive.clients[%d]", i)
			switch {
			case cl.ID == "":
				bad(field+".id", "is required")
			case oauth.IsCIMDClientID(cl.ID):
				bad(field+".id", "an https URL id is a client metadata document's; pick another id")
			}
			if len(cl.RedirectURIs) == 0 {
				bad(field+".redirect_uris", "list at least one")
			}
			if len(cl.Templates) == 0 {
				bad(field+".templates", "list at least one template")
			}
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

// interactiveOptions adds the authorization code grant to o: people sign
// in at the upstream issuer, records are kept in Redis (rc) so every
// broker shares them.
func (c *Config) interactiveOptions(o *server.OAuthOptions, rc redis.UniversalClient, getenv func(string) string) error {
	in := c.OAuth.Interactive
	if in == nil {
		return nil
	}
	store, err := revocation.NewRedisOAuthStore(rc, c.Redis.Prefix)
	if err != nil {
		return err
	}
	ic := &oauth.InteractiveConfig{Store: store, CIMD: oauth.CIMDConfig{Enabled: in.ClientIDMetadataDocuments},
		CodeTTL: time.Duration(in.CodeTTL), ConsentTTL: time.Duration(in.ConsentTTL)}
	for _, cl := range in.Clients {
		ic.Clients = append(ic.Clients, oauth.PublicClient{ID: cl.ID, Name: cl.Name, RedirectURIs: cl.RedirectURIs, Templates: cl.Templates})
	}
	o.Interactive = ic
	o.UpstreamLogin = &identity.LoginConfig{IssuerURL: in.Upstream.Issuer, ClientID: in.Upstream.ClientID, Scopes: in.Upstream.Scopes}
	if in.Upstream.ClientSecretEnv != "" {
		o.UpstreamLogin.ClientSecret = getenv(in.Upstream.ClientSecretEnv)
	}
	return nil
}

// agentIssuerNames are the trusted issuers' names and, with registered
// oauth clients, the name their principals carry.
func (c *Config) agentIssuerNames(names []string) []string {
	if len(c.OAuth.Clients) == 0 && c.OAuth.Interactive == nil {
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
