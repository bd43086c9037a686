package server

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/revocation"
)

// TestServeDeclarationIsOneRedisRoundTrip: a declaration on a server wired
// as `valet serve` wires it (cmd/valet serveRedis: Redis ledger whose
// Trail is the audit stream's chain, auditors the audit file and that
// chain, controls and epochs on the same Redis) costs one Redis round
// trip, from the first declaration on, and its grant is in the file and
// in the stream, each chain verifying.
func TestServeDeclarationIsOneRedisRoundTrip(t *testing.T) {
	ctx := t.Context()
	clock := testkit.NewClock(time.Now())
	o, _, idp, _ := testOptions(t, clock)
	rc, err := revocation.NewClient(redistest.Start(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	hook := &redistest.TripCounter{}
	rc.AddHook(hook)
	trail, err := audit.NewRedisWriter(rc, audit.RedisWriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stream := audit.NewLog(trail)
	ledger, err := revocation.NewRedisLedger(rc, revocation.RedisOptions{Trail: stream, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	controls, err := revocation.NewControls(rc, "valet", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	o.Ledger, o.Epochs, o.Loss, o.Controls, o.Records, o.Agent.Limiter = ledger, ledger, ledger, controls, ledger, ledger
	o.Auditors = []broker.Auditor{audit.NewLog(&file), stream}
	srv, err := New(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := ledger.Ping(ctx); err != nil { // serveRedis pings at start
		t.Fatal(err)
	}
	hook.Take()
	for i := range 3 {
		tok := idp.Token(t, map[string]any{"sub": "agent-7"}, oidctest.WithNow(clock.Now()))
		task, _, err := srv.Service().Declare(ctx, tok, broker.Declaration{Template: "triage", Intent: "triage ticket 1",
			Tools: []string{"tickets.read"}, TTL: time.Minute})
		if err != nil {
			t.Fatalf("declaration %d: %v", i, err)
		}
		if trips := hook.Take(); len(trips) != 1 {
			t.Fatalf("declaration %d took %d Redis round trips, want 1: %v", i, len(trips), trips)
		}
		if !strings.Contains(file.String(), task.ID) {
			t.Fatalf("declaration %d: the audit file has no record of task %s", i, task.ID)
		}
		tl, err := trail.Timeline(ctx, task.ID)
		if err != nil || len(tl) != 1 || tl[0].Outcome != "granted" {
			t.Fatalf("timeline of %s = %+v, %v; want its grant", task.ID, tl, err)
		}
		hook.Take()
	}
	if _, err := audit.Verify(bytes.NewReader(file.Bytes())); err != nil {
		t.Fatalf("audit file: %v", err)
	}
	if rep, err := audit.VerifyStream(ctx, rc, "valet"); err != nil || rep.Events != 3 {
		t.Fatalf("audit stream = %+v, %v; want 3 events", rep, err)
	}
}
