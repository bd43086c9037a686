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

// brokenAuditor fails every grant event once failing is set.
type brokenAuditor struct {
	failing atomic.Bool
	ended   atomic.Int64
}

func (a *brokenAuditor) Record(_ context.Context, e broker.Event) error {
	if e.Type == "task.revoked" {
		a.ended.Add(1)
	}
	if a.failing.Load() && e.Type == "task.granted" {
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
