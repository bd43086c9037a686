package e2e

import (
	"context"
	"log/slog"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/inventory"
	"github.com/valet-dev/valet/metrics"
	"github.com/valet-dev/valet/revocation"
)

// adminAudience is the admin API's audience: the same test IdP signs agent
// and admin tokens, so only the audience tells them apart.
const adminAudience = "valet-admin"

// incidentEnv is the incident-response side of an env.
type incidentEnv struct {
	rc       *redis.Client
	controls *revocation.Controls
	trail    *audit.RedisWriter
	metrics  *metrics.Metrics
	admin    *incident.Admin
	// auditor is what the env's Service audits to (its auditors in one).
	auditor broker.Auditor
	logs    *syncBuffer
	adminID broker.Authenticator
	hub     *fanout.Hub // the revocation stream's fan-out, on a Redis client of its own
	// inventory is the agent inventory, labelled owner from claims.team.
	inventory *revocation.RedisInventory
}

var testRoles = map[string]string{
	"viewer":    `"valet-viewers" in claims.groups`,
	"responder": `"valet-responders" in claims.groups`,
	"admin":     `"valet-admins" in claims.groups`,
}

// newAdmin builds another admin (another broker's) over this env's
// service, with its own job store and job tuning.
func (e *env) newAdmin(jobs incident.JobStore, lease time.Duration, batch int) *incident.Admin {
	a, err := incident.NewAdmin(incident.Config{
		Identity: e.inc.adminID, Core: e.svc, Ledger: e.ledger, Auditor: e.inc.auditor, Now: e.clock.Now,
		Controls: e.inc.controls, Jobs: jobs, Epochs: e.raw, Timeline: e.inc.trail,
		AgentIssuers: e.issuerNames, JobLease: lease, JobBatch: batch, InlineBudget: time.Nanosecond, Roles: testRoles,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return a
}

// incidentOptions adds the incident-response side to an env's options:
// controls, epochs, the Redis audit stream, metrics, the admin API, the
// revocation feed on a Redis client of its own, and a captured log.
func (e *env) incidentOptions(opts *server.Options, rc *redis.Client, o envOptions) {
	t := e.t
	var err error
	e.inc.rc = rc
	e.inc.logs = &syncBuffer{}
	opts.Logger = slog.New(slog.NewJSONHandler(e.inc.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if e.inc.controls, err = revocation.NewControls(rc, "valet", time.Second); err != nil {
		t.Fatal(err)
	}
	if e.inc.trail, err = audit.NewRedisWriter(rc, audit.RedisWriterOptions{}); err != nil {
		t.Fatal(err)
	}
	opts.Controls, opts.Epochs, opts.Loss = e.inc.controls, e.raw, e.raw
	opts.Auditors = append(opts.Auditors, audit.NewLog(e.inc.trail))
	e.inc.auditor = audit.Multi(opts.Auditors)
	opts.Metrics = &server.MetricsOptions{Live: e.raw.LiveCounts}
	e.inc.adminID, err = identity.New(context.Background(), []identity.IssuerConfig{{
		Name: "corp", IssuerURL: e.idp.URL(), Audiences: []string{adminAudience},
	}}, identity.Options{Now: e.clock.Now, SelfIssuer: e.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	resume := 200 * time.Millisecond
	if o.noAdminResume {
		resume = time.Hour
	}
	opts.Admin = &server.AdminOptions{Identity: e.inc.adminID, Roles: testRoles, Jobs: e.raw, Timeline: e.inc.trail,
		AgentIssuers: e.issuerNames, JobLease: o.jobLease, RollbackHosts: o.rollbackHosts, ResumeEvery: resume}
	e.inc.inventory, err = revocation.NewRedisInventory(rc, "valet", 0, e.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	labels, err := inventory.NewLabeler("inventory.labels", []inventory.LabelRule{{Name: "owner", Value: "claims.team"}})
	if err != nil {
		t.Fatal(err)
	}
	opts.Inventory = &server.InventoryOptions{Store: e.inc.inventory, Labels: labels}
	fc := revocation.NewFeedClient(rc, o.feed.WithDefaults().Readers)
	t.Cleanup(func() { fc.Close() })
	opts.Feed, opts.FeedLimits = revocation.NewFeed(fc, "valet"), o.feed
}

// adminToken is an admin identity token of the given groups.
func (e *env) adminToken(sub string, groups ...string) string {
	return e.idp.Token(e.t, map[string]any{"sub": sub, "aud": adminAudience, "groups": groups}, oidctest.WithNow(e.clock.Now()))
}
