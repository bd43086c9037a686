package identity

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/valet-dev/valet/broker"
)

// Login is the relying-party side of an OpenID Connect authorization code
// flow with PKCE (S256): Valet sends a person to a trusted issuer and takes
// an ID token back. The ID token is verified by the same Verifier, with the
// same hostile-token rules, as every other identity token, so the issuer
// must be configured in it with the client id among its audiences.
// Valet's console and its authorization endpoint both sign people in
// through a Login.
type Login struct {
	issuer   string
	oauth    oauth2.Config
	verifier *Verifier
	client   *http.Client
}

// LoginConfig configures one Login.
type LoginConfig struct {
	// IssuerURL is the exact iss of the provider; its discovery document
	// gives the authorization and token endpoints unless both are set.
	IssuerURL string
	// AuthURL and TokenURL skip discovery when both are set.
	AuthURL, TokenURL string
	// ClientID and ClientSecret are Valet's registration at the provider
	// (the secret may be empty for a public client, PKCE protects the code).
	ClientID, ClientSecret string
	// RedirectURL is Valet's callback, registered at the provider.
	RedirectURL string
	// Scopes are asked for besides openid.
	Scopes []string
	// HTTPClient talks to the provider; default a client with a 10 s timeout.
	HTTPClient *http.Client
}

// LoginState is what must be kept (in a cookie-bound session) between
// Start and Finish; none of it may reach the page.
type LoginState struct {
	State    string `json:"state"`
	Nonce    string `json:"nonce"`
	Verifier string `json:"verifier"`
}

// NewLogin discovers the provider's endpoints (unless given) and returns a
// Login whose ID tokens v verifies.
func NewLogin(ctx context.Context, cfg LoginConfig, v *Verifier) (*Login, error) {
	if cfg.IssuerURL == "" || cfg.ClientID == "" || cfg.RedirectURL == "" {
		return nil, errors.New("login: issuer URL, client id and redirect URL are required")
	}
	if v == nil || v.byURL[cfg.IssuerURL] == nil {
		return nil, fmt.Errorf("login: issuer %q is not one the verifier trusts", cfg.IssuerURL)
	}
	if err := v.byURL[cfg.IssuerURL].checkAudience(cfg.ClientID); err != nil {
		return nil, fmt.Errorf("login: issuer %q must accept the client id %q as an audience: %w", cfg.IssuerURL, cfg.ClientID, err)
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	ep := oauth2.Endpoint{AuthURL: cfg.AuthURL, TokenURL: cfg.TokenURL, AuthStyle: oauth2.AuthStyleInParams}
	if ep.AuthURL == "" || ep.TokenURL == "" {
		p, err := oidc.NewProvider(oidc.ClientContext(ctx, client), cfg.IssuerURL)
		if err != nil {
			return nil, fmt.Errorf("login: discovering %s: %w", cfg.IssuerURL, err)
		}
		ep.AuthURL, ep.TokenURL = p.Endpoint().AuthURL, p.Endpoint().TokenURL
	}
	if cfg.ClientSecret != "" {
		ep.AuthStyle = oauth2.AuthStyleInHeader
	}
	return &Login{
		issuer:   cfg.IssuerURL,
		verifier: v,
		client:   client,
		oauth: oauth2.Config{
			ClientID: cfg.ClientID, ClientSecret: cfg.ClientSecret, RedirectURL: cfg.RedirectURL,
			Endpoint: ep, Scopes: append([]string{oidc.ScopeOpenID}, cfg.Scopes...),
		},
	}, nil
}

// Start begins a sign-in: it returns the state to keep and the URL to send
// the person to. extra are added to the authorization request (login_hint,
// prompt, ...).
func (l *Login) Start(extra ...oauth2.AuthCodeOption) (LoginState, string) {
	st := LoginState{State: randomB64(24), Nonce: randomB64(24), Verifier: oauth2.GenerateVerifier()}
	opts := append([]oauth2.AuthCodeOption{oauth2.S256ChallengeOption(st.Verifier), oidc.Nonce(st.Nonce)}, extra...)
	return st, l.oauth.AuthCodeURL(st.State, opts...)
}

// Finish completes a sign-in from the query of the provider's redirect to
// RedirectURL: it checks state and, when present, the RFC 9207 iss, trades
// the code (with the PKCE verifier) for an ID token, and verifies the ID
// token and its nonce. The error never quotes a code or a token.
func (l *Login) Finish(ctx context.Context, st LoginState, q url.Values) (broker.Principal, error) {
	if e := q.Get("error"); e != "" {
		return broker.Principal{}, fmt.Errorf("the identity provider refused the sign-in: %s", quoteUntrusted(e+" "+q.Get("error_description")))
	}
	if st.State == "" || subtle.ConstantTimeCompare([]byte(q.Get("state")), []byte(st.State)) != 1 {
		return broker.Principal{}, errors.New("the sign-in's state does not match this session (start the sign-in again)")
	}
	if iss := q.Get("iss"); iss != "" && iss != l.issuer {
		return broker.Principal{}, fmt.Errorf("the sign-in response names issuer %s, not %s (RFC 9207)", quoteUntrusted(iss), l.issuer)
	}
	code := q.Get("code")
	if code == "" {
		return broker.Principal{}, errors.New("the sign-in response has no code")
	}
	tok, err := l.oauth.Exchange(oidc.ClientContext(ctx, l.client), code, oauth2.VerifierOption(st.Verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			return broker.Principal{}, fmt.Errorf("the identity provider refused the code: %s", quoteUntrusted(re.ErrorCode+" "+re.ErrorDescription))
		}
		return broker.Principal{}, fmt.Errorf("trading the code at the identity provider: %w", err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return broker.Principal{}, errors.New("the identity provider's token response has no id_token")
	}
	p, err := l.verifier.Authenticate(ctx, raw)
	if err != nil {
		return broker.Principal{}, fmt.Errorf("the ID token: %w", err)
	}
	if p.IssuerURL != l.issuer {
		return broker.Principal{}, fmt.Errorf("the ID token's issuer %s is not %s", quoteUntrusted(p.IssuerURL), l.issuer)
	}
	if n, _ := p.Claims["nonce"].(string); subtle.ConstantTimeCompare([]byte(n), []byte(st.Nonce)) != 1 {
		return broker.Principal{}, errors.New("the ID token's nonce does not match this sign-in")
	}
	if !audienceHas(p.Claims["aud"], l.oauth.ClientID) {
		return broker.Principal{}, fmt.Errorf("the ID token is not for client %q", l.oauth.ClientID)
	}
	return p, nil
}

// audienceHas reports whether an aud claim (a string or an array) holds id.
func audienceHas(aud any, id string) bool {
	switch a := aud.(type) {
	case string:
		return a == id
	case []any:
		for _, x := range a {
			if s, _ := x.(string); s == id {
				return true
			}
		}
	}
	return false
}

func randomB64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return strings.TrimRight(base64.RawURLEncoding.EncodeToString(b), "=")
}
