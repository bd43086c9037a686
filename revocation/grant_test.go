package revocation_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
)

// servedLedger is the ledger as `valet serve` builds it: the audit stream
// chain is its Trail (cmd/valet serveRedis).
func servedLedger(t testing.TB, c redis.UniversalClient, prefix string) (*revocation.RedisLedger, *audit.RedisWriter, *audit.Log) {
	t.Helper()
	w, err := audit.NewRedisWriter(c, audit.RedisWriterOptions{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	stream := audit.NewLog(w)
	return newRedisLedger(t, c, revocation.RedisOptions{Prefix: prefix, Trail: stream, Logger: quiet}), w, stream
}

func grantEvent(task broker.Task, creds []broker.Credential) broker.Event {
	ev := broker.Event{Time: time.Now().UTC(), Type: "task.declared", Actor: task.Agent, Issuer: task.Issuer,
		TaskID: task.ID, Template: task.Template, Outcome: "granted"}
	for _, c := range creds {
		ev.Creds = append(ev.Creds, c.ID)
	}
	return ev
}

// TestRedisServeDeclarationOneRoundTrip: in serve's configuration a
// declaration's ledger write and its line in the audit stream are one
// Redis round trip (an EVALSHA), from the first declaration on, and the
// chain it writes verifies.
func TestRedisServeDeclarationOneRoundTrip(t *testing.T) {
	ctx := t.Context()
	c := newClient(t, redistest.Start(t).URL())
	hook := &redistest.TripCounter{}
	c.AddHook(hook)
	l, w, stream := servedLedger(t, c, "serve")
	if err := l.Ping(ctx); err != nil { // serveRedis pings at start
		t.Fatal(err)
	}
	hook.Take()
	now := time.Now()
	for i := range 3 {
		task := activeTask(fmt.Sprint("serve-", i), now, time.Hour)
		creds := []broker.Credential{jwt(task.ID, fmt.Sprint("jti-serve-", i), now.Add(time.Minute))}
		ev := grantEvent(task, creds)
		chain, err := l.RecordGranted(ctx, task, creds, ev)
		if err != nil {
			t.Fatalf("RecordGranted %d: %v", i, err)
		}
		if calls := hook.Take(); len(calls) != 1 || calls[0] != "evalsha" {
			t.Fatalf("declaration %d took %d round trips, want 1 EVALSHA: %v", i, len(calls), calls)
		}
		// The broker then audits the event everywhere else; the stream's
		// chain skips it: it has it already.
		ev.Chained = chain
		if err := stream.Record(ctx, ev); err != nil {
			t.Fatal(err)
		}
		if calls := hook.Take(); len(calls) != 0 {
			t.Fatalf("the stream chain wrote a grant it had already: %v", calls)
		}
		tl, err := w.Timeline(ctx, task.ID)
		if err != nil || len(tl) != 1 || tl[0].Outcome != "granted" || tl[0].TaskID != task.ID {
			t.Fatalf("timeline of %s = %+v, %v; want its one grant", task.ID, tl, err)
		}
		hook.Take()
	}
	rep, err := audit.VerifyStream(ctx, c, "serve")
	if err != nil || rep.Chains[w.Chain()] != 3 || rep.Events != 3 {
		t.Fatalf("VerifyStream = %+v, %v; want 3 events in chain %s", rep, err, w.Chain())
	}
}

// TestRedisGrantRefusedLeavesNoGap: a record the script refuses (a
// duplicate, a parent no longer active) writes no audit line either, and
// the chain goes on without a gap; a record whose outcome is unknown
// (Redis gone mid-call) is found out from the chain's head.
func TestRedisGrantRefusedLeavesNoGap(t *testing.T) {
	ctx := t.Context()
	srv := redistest.Start(t)
	c := newClient(t, srv.URL())
	l, w, stream := servedLedger(t, c, "gap")
	now := time.Now()
	task := activeTask("gap", now, time.Hour)
	creds := []broker.Credential{jwt(task.ID, "jti-gap", now.Add(time.Minute))}
	if _, err := l.RecordGranted(ctx, task, creds, grantEvent(task, creds)); err != nil {
		t.Fatal(err)
	}
	if _, err := l.RecordGranted(ctx, task, creds, grantEvent(task, creds)); !errors.Is(err, revocation.ErrDuplicate) {
		t.Fatalf("the same task again = %v, want ErrDuplicate", err)
	}
	child := activeTask("gap-child", now, time.Hour)
	child.Parent, child.Root, child.Depth = "task-gone", "task-gone", 1
	if _, err := l.RecordGranted(ctx, child, nil, grantEvent(child, nil)); !errors.Is(err, broker.ErrNotActive) {
		t.Fatalf("a child of a missing parent = %v, want ErrNotActive", err)
	}
	// An event through the chain as an auditor, then another grant.
	if err := stream.Record(ctx, broker.Event{Time: now, Type: "task.completed", TaskID: task.ID}); err != nil {
		t.Fatal(err)
	}
	next := activeTask("gap-next", now, time.Hour)
	nextCreds := []broker.Credential{jwt(next.ID, "jti-gap-next", now.Add(time.Minute))}
	if _, err := l.RecordGranted(ctx, next, nextCreds, grantEvent(next, nextCreds)); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.VerifyStream(ctx, c, "gap")
	if err != nil || rep.Chains[w.Chain()] != 3 {
		t.Fatalf("VerifyStream = %+v, %v; want 3 events (2 grants, 1 completion) and no gap", rep, err)
	}
	if _, _, err := l.Task(ctx, child.ID); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("the refused child was recorded: %v", err)
	}
}
