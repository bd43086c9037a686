package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/console"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/server"
)

// ConsoleConfig is the `admin.console` block: the web console at /console
// and its sign-in (authorization code + PKCE) at one of the admin issuers.
type ConsoleConfig struct {
	// Issuer is the name of the admin.issuers entry people sign in at.
	Issuer string `yaml:"issuer"`
	// ClientID is the console's registration at that issuer (the aud of its
	// ID tokens); ClientSecretEnv names the variable of its secret, when
	// the registration is confidential (PKCE protects a public one).
	ClientID        string `yaml:"client_id"`
	ClientSecretEnv string `yaml:"client_secret_env"`
	// SessionTTL caps a session (default 8h; the ID token's exp caps it too).
	SessionTTL Duration `yaml:"session_ttl"`
}

// validateConsole checks admin.console, every problem at once.
func (c *Config) validateConsole() []error {
	cc := c.Admin.Console
	if cc == (ConsoleConfig{}) {
		return nil
	}
	var errs []error
	if cc.Issuer == "" || cc.ClientID == "" {
		errs = append(errs, fmt.Errorf("admin.console: issuer and client_id are required"))
	} else if !slices.ContainsFunc(c.Admin.Issuers, func(is IssuerEntry) bool { return is.Name == cc.Issuer }) {
		errs = append(errs, fmt.Errorf("admin.console.issuer: %q is not the name of an admin.issuers entry", cc.Issuer))
	}
	for _, is := range c.Admin.Issuers {
		if is.Name == cc.Issuer && slices.Contains(is.Audiences, cc.ClientID) {
			errs = append(errs, fmt.Errorf("admin.console.client_id: %q is also an audience of admin issuer %q: the console's ID tokens would pass as admin API tokens", cc.ClientID, is.Name))
		}
	}
	if d := time.Duration(cc.SessionTTL); d < 0 || d > 24*time.Hour {
		errs = append(errs, fmt.Errorf("admin.console.session_ttl: must be from 0 (the default, 8h) to 24h"))
	}
	if c.PublicURL == "" {
		errs = append(errs, fmt.Errorf("admin.console: public_url is required (the sign-in's redirect URL is public_url/console/callback)"))
	}
	return errs
}

// consoleOptions builds the console when admin.console is set (nil
// otherwise): a verifier of the admin issuer for the console's client id
// only, the sign-in, and the Redis audit stream for the live view.
func consoleOptions(ctx context.Context, c *Config, getenv func(string) string, rc redis.UniversalClient) (*server.ConsoleOptions, error) {
	cc := c.Admin.Console
	if cc.Issuer == "" {
		return nil, nil
	}
	i := slices.IndexFunc(c.Admin.Issuers, func(is IssuerEntry) bool { return is.Name == cc.Issuer })
	is := c.Admin.Issuers[i]
	v, err := identity.New(ctx, []identity.IssuerConfig{{Name: is.Name, IssuerURL: is.IssuerURL, Audiences: []string{cc.ClientID},
		Algorithms: is.Algorithms, SubjectClaim: is.SubjectClaim, Condition: is.Condition, JWKSURL: is.JWKSURL}}, identity.Options{SelfIssuer: c.PublicURL})
	if err != nil {
		return nil, fmt.Errorf("admin.console: %w", err)
	}
	secret := ""
	if cc.ClientSecretEnv != "" {
		if secret = getenv(cc.ClientSecretEnv); secret == "" {
			return nil, fmt.Errorf("admin.console.client_secret_env: %s is not set", cc.ClientSecretEnv)
		}
	}
	login, err := identity.NewLogin(ctx, identity.LoginConfig{IssuerURL: is.IssuerURL, ClientID: cc.ClientID, ClientSecret: secret,
		RedirectURL: c.PublicURL + "/console/callback"}, v)
	if err != nil {
		return nil, fmt.Errorf("admin.console: %w", err)
	}
	trail, err := console.NewRedisTrail(rc, c.Redis.Prefix)
	if err != nil {
		return nil, err
	}
	return &server.ConsoleOptions{SignIn: login, Trail: trail, SessionTTL: time.Duration(cc.SessionTTL)}, nil
}
