// Package devidp is the development OIDC issuer of `valet dev`: it signs
// identity tokens for any agent name asked of it, so Valet can be tried with
// no real identity provider. It must never be trusted in production.
package devidp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// Audience is the aud of every development identity token.
const Audience = "valet"

var agentName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$`)

// IdP signs development identity tokens with a key generated at start.
type IdP struct {
	issuer string
	kid    string
	key    crypto.Signer
	jwks   []byte
	ttl    time.Duration
	now    func() time.Time
	codes  codes
}

// New generates a P-256 key and serves as issuer (the exact iss URL).
func New(issuer string, now func() time.Time) (*IdP, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating development issuer key: %w", err)
	}
	jwk := jose.JSONWebKey{Key: key.Public(), Algorithm: "ES256", Use: "sig"}
	thumb, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, err
	}
	jwk.KeyID = fmt.Sprintf("dev-%x", thumb[:8])
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk}})
	if err != nil {
		return nil, err
	}
	if now == nil {
		now = time.Now
	}
	return &IdP{issuer: strings.TrimSuffix(issuer, "/"), kid: jwk.KeyID, key: key, jwks: jwks, ttl: time.Hour, now: now}, nil
}

// Issuer is the iss of the tokens.
func (d *IdP) Issuer() string { return d.issuer }

// JWKS is the public key set document.
func (d *IdP) JWKS() []byte { return d.jwks }

// Token signs a one-hour identity token naming agent as its subject.
func (d *IdP) Token(agent string) (string, error) {
	if !agentName.MatchString(agent) {
		return "", errors.New("agent must be 1-128 characters of letters, digits and ._@:- starting with a letter or digit")
	}
	now := d.now()
	t := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"iss": d.issuer, "sub": agent, "aud": Audience,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(d.ttl).Unix(),
		"agent_kind": "development",
	})
	t.Header["kid"] = d.kid
	return t.SignedString(d.key)
}

// Handler serves discovery, the JWKS, POST /token?agent=NAME and the
// authorization code flow (authorize.go) under the issuer's path, for
// processes that trust this issuer over HTTP.
func (d *IdP) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"issuer":                                         d.issuer,
			"jwks_uri":                                       d.issuer + "/jwks",
			"token_endpoint":                                 d.issuer + "/token",
			"authorization_endpoint":                         d.issuer + "/authorize",
			"response_types_supported":                       []string{"code", "id_token"},
			"grant_types_supported":                          []string{"authorization_code"},
			"code_challenge_methods_supported":               []string{"S256"},
			"token_endpoint_auth_methods_supported":          []string{"none"},
			"authorization_response_iss_parameter_supported": true,
			"subject_types_supported":                        []string{"public"},
			"id_token_signing_alg_values_supported":          []string{"ES256"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(d.jwks)
	})
	mux.HandleFunc("GET /authorize", d.handleAuthorize)
	mux.HandleFunc("POST /authorize", d.handleAuthorize)
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("agent") == "" && r.URL.Query().Get("admin") == "" {
			r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
			if err := r.ParseForm(); err == nil && r.PostForm.Get("grant_type") == "authorization_code" {
				d.exchangeCode(w, r.PostForm)
				return
			}
		}
		if admin := r.URL.Query().Get("admin"); admin != "" {
			tok, err := d.AdminToken(admin)
			if err != nil {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "message": err.Error(), "field": "admin"})
				return
			}
			writeJSON(w, http.StatusOK, map[string]string{"identity_token": tok, "admin": admin})
			return
		}
		agent := r.URL.Query().Get("agent")
		if agent == "" {
			agent = r.PostForm.Get("agent")
		}
		tok, err := d.Token(agent)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "message": err.Error(), "field": "agent"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"identity_token": tok, "agent": agent})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
