package e2e

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// brokenAuditor fails every grant event (of type fails, task.granted when
// unset) once failing is set.
type brokenAuditor struct {
	fails   string
	failing atomic.Bool
	ended   atomic.Int64
}

func (a *brokenAuditor) Record(_ context.Context, e broker.Event) error {
	if e.Type == "task.revoked" {
		a.ended.Add(1)
	}
	fails := a.fails
	if fails == "" {
		fails = "task.granted"
	}
	if a.failing.Load() && e.Type == fails {
		return errors.New("audit disk full")
	}
	return nil
}

// TestNoAuditNoCredential: a grant whose audit event cannot be written is
// answered 503 without credentials, and the task it recorded is revoked.
func TestNoAuditNoCredential(t *testing.T) {
	a := &brokenAuditor{}
	e := newEnv(t, envOptions{auditor: a})
	a.failing.Store(true)
	before := e.ledger.writes.Load()
	r := e.declare(e.identity("agent-7"), `{"template":"triage","intent":"triage ticket 4521","tools":["tickets.read"]}`)
	if r.Status != http.StatusServiceUnavailable || strings.Contains(string(r.Body), "access_token") {
		t.Fatalf("declare with a failing audit log: %d %s", r.Status, r.Body)
	}
	// One write recorded the task, one ended it as revoked.
	if n := e.ledger.writes.Load() - before; n != 2 || a.ended.Load() != 1 {
		t.Fatalf("ledger writes %d (want record + end), revoked events %d", n, a.ended.Load())
	}
	ids, err := e.raw.Due(context.Background(), e.clock.Now().Add(24*60*60*1e9), 10)
	if err != nil || len(ids) != 0 {
		t.Fatalf("an unaudited task is still active: %v %v", ids, err)
	}
}

// TestNoAuditNoDelegation: an exchange whose task.delegated event cannot be
// written is answered 503 without a token, and the child task it recorded
// is ended with the refusal's reason; the parent lives on.
func TestNoAuditNoDelegation(t *testing.T) {
	a := &brokenAuditor{fails: "task.delegated"}
	e := newEnv(t, envOptions{templates: agentTemplates, auditor: a})
	parentID, parentTok := e.declareIn("crew", "agent-1", "tickets.read")
	a.failing.Store(true)
	before := e.ledger.writes.Load()
	r := e.exchange(parentTok, "agent-2", "tickets.read", nil)
	if r.Status != http.StatusServiceUnavailable || strings.Contains(string(r.Body), "access_token") {
		t.Fatalf("exchange with a failing audit log: %d %s", r.Status, r.Body)
	}
	if n := e.ledger.writes.Load() - before; n != 2 || a.ended.Load() != 1 {
		t.Fatalf("ledger writes %d (want record + end), revoked events %d", n, a.ended.Load())
	}
	ctx := context.Background()
	kids, err := e.raw.Children(ctx, parentID)
	if err != nil || len(kids) != 1 {
		t.Fatalf("children of the parent: %v %v", kids, err)
	}
	child, _, err := e.raw.Task(ctx, kids[0])
	if err != nil || child.State != broker.StateRevoked || child.EndReason != broker.RefusedReason {
		t.Fatalf("the unaudited child: %+v %v", child, err)
	}
	if m := e.introspect(parentTok); m["active"] != true {
		t.Fatalf("the parent died with its unaudited child: %v", m)
	}
}
