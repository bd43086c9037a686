package e2e

import (
	"context"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/httpapi"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/metrics"
	"github.com/valet-dev/valet/revocation"
)

// adminAudience is the admin API's audience: the same test IdP signs agent
// and admin tokens, so only the audience tells them apart.
const adminAudience = "valet-admin"

// incident is the incident-response side of an env.
type incident struct {
	rc       *redis.Client
	controls *revocation.Controls
	trail    *audit.RedisWriter
	metrics  *metrics.Metrics
	admin    *broker.Admin
	logs     *syncBuffer
	stop     context.CancelFunc
	adminID  broker.Authenticator
	hub      *fanout.Hub // the revocation stream's fan-out, on a Redis client of its own
	// stopAdmin stops the env's admin from resuming jobs (tests that play
	// several brokers).
	stopAdmin context.CancelFunc
}

var testRoles = map[string]string{
	"viewer":    `"valet-viewers" in claims.groups`,
	"responder": `"valet-responders" in claims.groups`,
	"admin":     `"valet-admins" in claims.groups`,
}

// newAdmin builds another admin (another broker's) over this env's
// service, with its own job store and job tuning.
func (e *env) newAdmin(jobs broker.JobStore, lease time.Duration, batch int) *broker.Admin {
	a, err := broker.NewAdmin(broker.AdminConfig{
		Identity: e.inc.adminID, Service: e.svc, Controls: e.inc.controls, Jobs: jobs, Epochs: e.raw, Timeline: e.inc.trail,
		AgentIssuers: e.issuerNames, JobLease: lease, JobBatch: batch, InlineBudget: time.Nanosecond, Roles: testRoles,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

func (e *env) incidentConfig(cfg *broker.Config, rc *redis.Client) {
	t := e.t
	var err error
	e.inc.rc = rc
	e.inc.logs = &syncBuffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(e.inc.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if e.inc.controls, err = revocation.NewControls(rc, "valet", time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.inc.stop = cancel
	t.Cleanup(cancel)
	e.inc.controls.Reload(ctx)
	go e.inc.controls.Run(ctx)
	if e.inc.trail, err = audit.NewRedisWriter(rc, audit.RedisWriterOptions{}); err != nil {
		t.Fatal(err)
	}
	e.inc.metrics = metrics.New(metrics.Options{KnownTemplate: func(n string) bool { return n == "triage" }, Now: e.clock.Now,
		Live:            func(ctx context.Context) (int64, int64, error) { return e.raw.LiveCounts(ctx, e.clock.Now()) },
		FeedSubscribers: func() float64 { return float64(e.inc.hub.Subscribers()) }})
	cfg.Controls, cfg.Epochs = e.inc.controls, e.raw
	cfg.Auditor = e.inc.metrics.Auditor(audit.Multi{cfg.Auditor, audit.NewLog(e.inc.trail)})
}

func (e *env) incidentHTTP(h *httpapi.Options, o envOptions) {
	t := e.t
	adminID, err := identity.New(context.Background(), []identity.IssuerConfig{{
		Name: "corp", IssuerURL: e.idp.URL(), Audiences: []string{adminAudience},
	}}, identity.Options{Now: e.clock.Now, SelfIssuer: e.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	e.inc.admin, err = broker.NewAdmin(broker.AdminConfig{
		Identity: adminID, Service: e.svc, Controls: e.inc.controls, Jobs: e.raw, Epochs: e.raw, Timeline: e.inc.trail,
		AgentIssuers: e.issuerNames, JobLease: o.jobLease, Logger: slog.New(slog.NewJSONHandler(e.inc.logs, nil)),
		Roles: testRoles, Rollback: broker.RollbackConfig{AllowedHosts: o.rollbackHosts},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.inc.adminID = adminID
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e.inc.stopAdmin = cancel
	e.inc.admin.Start(ctx, 200*time.Millisecond)
	fc := revocation.NewFeedClient(e.inc.rc, o.feed.WithDefaults().Readers)
	t.Cleanup(func() { fc.Close() })
	feed := revocation.NewFeed(fc, "valet")
	if e.inc.hub, err = fanout.New(feed, o.feed, nil); err != nil {
		t.Fatal(err)
	}
	h.Admin, h.Feed, h.FeedHub, h.Metrics = e.inc.admin, feed, e.inc.hub, e.inc.metrics
	h.Logger = slog.New(slog.NewJSONHandler(e.inc.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// adminToken is an admin identity token of the given groups.
func (e *env) adminToken(sub string, groups ...string) string {
	return e.idp.Token(e.t, map[string]any{"sub": sub, "aud": adminAudience, "groups": groups}, oidctest.WithNow(e.clock.Now()))
}
