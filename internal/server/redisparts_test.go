package server

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
)

// redisParts are the Redis-backed stores and the admin issuer a server test
// runs on, as serve wires them.
type redisParts struct {
	rc       *redis.Client
	ledger   *revocation.RedisLedger
	controls *revocation.Controls
	trail    *audit.RedisWriter
	admins   *oidctest.Issuer
	adminID  *identity.Verifier
}

// withRedis starts a private redis-server and builds the ledger, controls
// (re-read every controlsRefresh), audit stream and an admin issuer on it,
// then points o's ledger, epochs, controls, feed, agent limiter and admin
// API (the admin role for every admin token) at them.
func withRedis(tb testing.TB, o *Options, controlsRefresh time.Duration) redisParts {
	tb.Helper()
	srv := redistest.Start(tb)
	var r redisParts
	var err error
	if r.rc, err = revocation.NewClient(srv.URL()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { r.rc.Close() })
	if r.ledger, err = revocation.NewRedisLedger(r.rc, revocation.RedisOptions{Retention: time.Hour}); err != nil {
		tb.Fatal(err)
	}
	if r.controls, err = revocation.NewControls(r.rc, "valet", controlsRefresh); err != nil {
		tb.Fatal(err)
	}
	if r.trail, err = audit.NewRedisWriter(r.rc, audit.RedisWriterOptions{}); err != nil {
		tb.Fatal(err)
	}
	r.admins = oidctest.New(tb)
	r.adminID, err = identity.New(context.Background(), []identity.IssuerConfig{{Name: "admins", IssuerURL: r.admins.URL(), Audiences: []string{"valet-admin"}}},
		identity.Options{SelfIssuer: o.PublicURL})
	if err != nil {
		tb.Fatal(err)
	}
	o.Ledger, o.Epochs, o.Controls, o.Feed, o.Agent.Limiter = r.ledger, r.ledger, r.controls, r.ledger.Feed(), r.ledger
	o.Admin = &AdminOptions{Identity: r.adminID, Roles: map[string]string{"admin": "true"}, Jobs: r.ledger, Timeline: r.trail, AgentIssuers: []string{"test"}}
	return r
}
