package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/internal/server"
)

// AdminConfig is the `admin:` block: the admins' identity providers and
// the CEL rule of each role over their tokens' claims.
type AdminConfig struct {
	Issuers []IssuerEntry     `yaml:"issuers"`
	Roles   map[string]string `yaml:"roles"`
	// Console, when its issuer is set, serves the web console.
	Console ConsoleConfig `yaml:"console"`
}

// validateIncident checks the admin block. An admin issuer that is also an
// agent issuer must use other audiences, so that no agent token passes.
func (c *Config) validateIncident() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if len(c.Admin.Issuers) > 0 && len(c.Admin.Roles) == 0 {
		bad("admin.roles", "at least one role is required when admin.issuers is set")
	}
	for name := range c.Admin.Roles {
		if _, ok := incident.ParseRole(name); !ok {
			bad("admin.roles."+name, "is not a role (viewer, operator, responder, admin)")
		}
	}
	for i, a := range c.Admin.Issuers {
		field := fmt.Sprintf("admin.issuers[%d]", i)
		if a.Name == "" || a.IssuerURL == "" || len(a.Audiences) == 0 {
			bad(field, "name, issuer_url and audiences are required")
		}
		for _, g := range c.Issuers {
			if g.IssuerURL != a.IssuerURL {
				continue
			}
			for _, aud := range a.Audiences {
				if slices.Contains(g.Audiences, aud) {
					bad(field+".audiences", "%q is also an audience of agent issuer %q: agent tokens would pass as admin tokens", aud, g.Name)
				}
			}
		}
	}
	return append(errs, c.validateConsole()...)
}

// adminOptions builds the admin API's options when admin issuers are
// configured (nil otherwise): the admins' identity verifier, their roles,
// the job store and the audit trail the task timelines are read from.
// static gives JWKS documents by issuer URL (the development issuer's).
func adminOptions(ctx context.Context, ac AdminConfig, selfIssuer string, agentIssuers []string, static map[string][]byte,
	rollbackHosts []string, jobs incident.JobStore, timeline incident.TimelineReader, log *slog.Logger) (*server.AdminOptions, error) {
	if len(ac.Issuers) == 0 {
		return nil, nil
	}
	cfgs := make([]identity.IssuerConfig, len(ac.Issuers))
	for i, is := range ac.Issuers {
		cfgs[i] = identity.IssuerConfig{Name: is.Name, IssuerURL: is.IssuerURL, Audiences: is.Audiences, Algorithms: is.Algorithms,
			SubjectClaim: is.SubjectClaim, Condition: is.Condition, JWKSURL: is.JWKSURL, StaticJWKS: static[is.IssuerURL], Types: is.Types}
	}
	id, err := identity.New(ctx, cfgs, identity.Options{SelfIssuer: selfIssuer, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("admin.issuers: %w", err)
	}
	return &server.AdminOptions{Identity: id, Roles: ac.Roles, Jobs: jobs, Timeline: timeline, AgentIssuers: agentIssuers,
		RollbackHosts: rollbackHosts}, nil
}
