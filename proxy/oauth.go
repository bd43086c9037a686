package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/valet-dev/valet/policy"
)

// OAuthProvider is an OAuth authorization server the proxy gets access
// tokens from with the client credentials grant (RFC 6749 section 4.4),
// for upstreams whose credential is "oauth:<Name>". The token is the
// proxy's own, attached to a call only while the calling task is live and
// its route's tool granted; the agent never sees it.
type OAuthProvider struct {
	// Name is what templates say after "oauth:".
	Name string
	// TokenURL is the provider's token endpoint.
	TokenURL string
	// ClientID and ClientSecret are the proxy's client at the provider
	// (the secret read from a file by `valet proxy`).
	ClientID, ClientSecret string
	// Scopes are asked for when an upstream names none.
	Scopes []string
}

const (
	// oauthSkew is how long before its expiry a cached token is replaced.
	oauthSkew = 30 * time.Second
	// oauthMaxCache bounds the caching of a token whose provider gave no
	// expires_in: the proxy does not hold a credential of unknown life.
	oauthMaxCache = 5 * time.Minute
	// oauthTimeout bounds one token request.
	oauthTimeout = 10 * time.Second
)

// oauthError is a token the proxy could not get; the agent is told which
// provider failed (503), never what the provider answered.
type oauthError struct {
	provider string
	err      error
}

func (e *oauthError) Error() string {
	return fmt.Sprintf("getting a token from OAuth provider %q: %v", e.provider, e.err)
}

func (e *oauthError) Unwrap() error { return e.err }

// oauthTokens fetches and caches access tokens per provider and scope set.
// It is safe for concurrent use; one fetch per key runs at a time.
type oauthTokens struct {
	providers map[string]OAuthProvider
	client    *http.Client
	now       func() time.Time

	mu      sync.Mutex
	entries map[string]*oauthEntry
}

type oauthEntry struct {
	mu     sync.Mutex // held while fetching
	token  string
	expiry time.Time
}

// newOAuthTokens checks the providers and that every oauth credential of
// the templates names one of them; it reports every problem at once.
func newOAuthTokens(providers []OAuthProvider, templates *policy.Set, client *http.Client, now func() time.Time) (*oauthTokens, error) {
	o := &oauthTokens{providers: map[string]OAuthProvider{}, client: client, now: now, entries: map[string]*oauthEntry{}}
	var errs []error
	for i, p := range providers {
		switch {
		case !policy.ProviderNameRE.MatchString(p.Name):
			errs = append(errs, fmt.Errorf("oauth provider %d: name %q: use 1 to 63 of a-z, 0-9, '_', '-'", i, p.Name))
			continue
		case p.TokenURL == "" || p.ClientID == "" || p.ClientSecret == "":
			errs = append(errs, fmt.Errorf("oauth provider %q: token URL, client id and client secret are required", p.Name))
		}
		if _, dup := o.providers[p.Name]; dup {
			errs = append(errs, fmt.Errorf("oauth provider %q is configured twice", p.Name))
		}
		o.providers[p.Name] = p
	}
	for _, name := range templates.Names() {
		t, _ := templates.Get(name)
		for _, u := range t.Upstreams {
			if prov := u.Credential.Provider; prov != "" {
				if _, ok := o.providers[prov]; !ok {
					errs = append(errs, fmt.Errorf("template %q, upstream %q: credential %q names no configured OAuth provider", name, u.Name, u.Credential.From))
				}
			}
		}
	}
	return o, errors.Join(errs...)
}

// token is a live access token of provider for scopes (the provider's
// default scopes when none), from the cache or fetched now.
func (o *oauthTokens) token(ctx context.Context, provider string, scopes []string) (string, error) {
	p, ok := o.providers[provider]
	if !ok {
		return "", &oauthError{provider: provider, err: errors.New("not configured")}
	}
	if len(scopes) == 0 {
		scopes = p.Scopes
	}
	scopes = slices.Clone(scopes)
	slices.Sort(scopes)
	key := provider + "\x00" + strings.Join(scopes, " ")
	o.mu.Lock()
	e := o.entries[key]
	if e == nil {
		e = &oauthEntry{}
		o.entries[key] = e
	}
	o.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	now := o.now()
	if e.token != "" && now.Before(e.expiry) {
		return e.token, nil
	}
	e.token = ""
	cc := clientcredentials.Config{ClientID: p.ClientID, ClientSecret: p.ClientSecret, TokenURL: p.TokenURL, Scopes: scopes}
	fctx, cancel := context.WithTimeout(context.WithValue(ctx, oauth2.HTTPClient, o.client), oauthTimeout)
	defer cancel()
	tok, err := cc.Token(fctx)
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil { // the provider's answer body stays out of logs and answers
			err = fmt.Errorf("the token endpoint answered %d %s", re.Response.StatusCode, re.ErrorCode)
		}
		return "", &oauthError{provider: provider, err: err}
	}
	if tok.AccessToken == "" || (tok.TokenType != "" && !strings.EqualFold(tok.TokenType, "Bearer")) {
		return "", &oauthError{provider: provider, err: fmt.Errorf("the token endpoint gave no bearer token (type %q)", tok.TokenType)}
	}
	expiry := now.Add(oauthMaxCache)
	if !tok.Expiry.IsZero() && tok.Expiry.Add(-oauthSkew).Before(expiry) {
		expiry = tok.Expiry.Add(-oauthSkew)
	}
	if !now.Before(expiry) { // lives less than the skew: use it once, keep it not
		return tok.AccessToken, nil
	}
	e.token, e.expiry = tok.AccessToken, expiry
	return e.token, nil
}
