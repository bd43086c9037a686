package main

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/console"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/devidp"
	"github.com/valet-dev/valet/internal/server"
)

// devConsoleClient is the client id of the console at the development
// issuer: the aud of its ID tokens, which no other verifier accepts (not
// the admin API's, whose audience is devidp.AdminAudience).
const devConsoleClient = "valet-console"

// devConsole is the web console of `valet dev --redis`: sign-in at the
// development issuer (authorization code + PKCE), the live view and the
// chain status from the Redis audit stream.
func devConsole(ctx context.Context, rc redis.UniversalClient, publicURL string, idp *devidp.IdP) (*server.ConsoleOptions, error) {
	v, err := identity.New(ctx, []identity.IssuerConfig{{Name: "dev-admin", IssuerURL: idp.Issuer(), Audiences: []string{devConsoleClient},
		StaticJWKS: idp.JWKS()}}, identity.Options{SelfIssuer: publicURL})
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	// The endpoints are given, not discovered: the issuer is served by this
	// very process, which does not answer before it starts.
	login, err := identity.NewLogin(ctx, identity.LoginConfig{IssuerURL: idp.Issuer(), AuthURL: idp.Issuer() + "/authorize",
		TokenURL: idp.Issuer() + "/token", ClientID: devConsoleClient, RedirectURL: publicURL + "/console/callback"}, v)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	trail, err := console.NewRedisTrail(rc, "valet")
	if err != nil {
		return nil, err
	}
	return &server.ConsoleOptions{SignIn: login, Trail: trail}, nil
}
