package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/httpapi"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/metrics"
	"github.com/valet-dev/valet/revocation"
)

// AdminConfig is the `admin:` block: the admins' identity providers and
// the CEL rule of each role over their tokens' claims.
type AdminConfig struct {
	Issuers []IssuerEntry     `yaml:"issuers"`
	Roles   map[string]string `yaml:"roles"`
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
		if _, ok := broker.ParseRole(name); !ok {
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
	return errs
}

// incident is the incident-response side of a broker: controls, epochs,
// jobs, the feed, the Redis audit stream, metrics and the admin API.
type incident struct {
	// rollbackHosts are the hosts whose undo webhooks a rollback may call
	// (config rollback.allowed_hosts).
	rollbackHosts []string
	controls      *revocation.Controls
	trail         *audit.RedisWriter
	metrics       *metrics.Metrics
	admin         *broker.Admin
	feed          broker.Feed
	hub           *fanout.Hub
}

// startFeed serves the revocation feed through a Redis client of its own
// (closed when ctx ends) and one fan-out, so that followers never hold a
// connection of the ledger's pool.
func (inc *incident) startFeed(ctx context.Context, rc *redis.Client, prefix string, lim fanout.Limits, log *slog.Logger) error {
	lim = lim.WithDefaults()
	fc := revocation.NewFeedClient(rc, lim.Readers)
	context.AfterFunc(ctx, func() { fc.Close() })
	inc.feed = revocation.NewFeed(fc, prefix)
	var err error
	inc.hub, err = fanout.New(inc.feed, lim, log)
	return err
}

// newIncident builds the parts that the Service needs, and the auditor to
// give it: the file/stdout log, the Redis stream log, counted by metrics.
func newIncident(ctx context.Context, rc redis.UniversalClient, ro audit.RedisWriterOptions, base broker.Auditor, known func(string) bool, pending func() float64,
	ledger *revocation.RedisLedger, log *slog.Logger) (*incident, broker.Auditor, error) {
	controls, err := revocation.NewControls(rc, ro.Prefix, 5*time.Second)
	if err != nil {
		return nil, nil, err
	}
	controls.Reload(ctx)
	go controls.Run(ctx)
	trail, err := audit.NewRedisWriter(rc, ro)
	if err != nil {
		return nil, nil, err
	}
	inc := &incident{controls: controls, trail: trail}
	inc.metrics = metrics.New(metrics.Options{
		KnownTemplate: known,
		Pending:       pending,
		Live:          func(ctx context.Context) (int64, int64, error) { return ledger.LiveCounts(ctx, time.Now()) },
		Logger:        log,
		RunningJobs: func() float64 {
			if inc.admin == nil {
				return 0
			}
			return float64(inc.admin.RunningJobs())
		},
		FinishedJobs: func() float64 {
			if inc.admin == nil {
				return 0
			}
			return float64(inc.admin.FinishedJobs())
		},
		FeedSubscribers: func() float64 {
			if inc.hub == nil {
				return 0
			}
			return float64(inc.hub.Subscribers())
		},
	})
	return inc, inc.metrics.Auditor(audit.Multi{base, audit.NewLog(trail)}), nil
}

// startAdmin builds the admin API over svc when admin issuers are
// configured, and resumes unfinished revocation jobs.
func (inc *incident) startAdmin(ctx context.Context, ac AdminConfig, selfIssuer string, svc *broker.Service, ledger *revocation.RedisLedger,
	agentIssuers []string, static map[string][]byte, log *slog.Logger) error {
	if len(ac.Issuers) == 0 {
		return nil
	}
	cfgs := make([]identity.IssuerConfig, len(ac.Issuers))
	for i, is := range ac.Issuers {
		cfgs[i] = identity.IssuerConfig{Name: is.Name, IssuerURL: is.IssuerURL, Audiences: is.Audiences, Algorithms: is.Algorithms,
			SubjectClaim: is.SubjectClaim, Condition: is.Condition, JWKSURL: is.JWKSURL, StaticJWKS: static[is.IssuerURL], Types: is.Types}
	}
	id, err := identity.New(ctx, cfgs, identity.Options{SelfIssuer: selfIssuer, Logger: log})
	if err != nil {
		return fmt.Errorf("admin.issuers: %w", err)
	}
	inc.admin, err = broker.NewAdmin(broker.AdminConfig{
		Identity: id, Roles: ac.Roles, Service: svc, Controls: inc.controls, Jobs: ledger, Epochs: ledger, Timeline: inc.trail,
		AgentIssuers: agentIssuers, Logger: log, Rollback: broker.RollbackConfig{AllowedHosts: inc.rollbackHosts},
	})
	if err != nil {
		return err
	}
	inc.admin.Start(ctx, 5*time.Second)
	return nil
}

// httpMetrics is the metrics for httpapi.Options, nil when there are none
// (a nil *Metrics in the interface would not be nil).
// With mc.Listen set, the main surface times requests but serves no
// /metrics (serveMetrics does).
func (inc *incident) httpMetrics(mc MetricsConfig, secret string) httpapi.Metrics {
	if inc.metrics == nil {
		return nil
	}
	if mc.Listen != "" {
		return routedMetrics{inc.metrics, nil}
	}
	return routedMetrics{inc.metrics, metricsHandler(inc.metrics, secret)}
}
