package e2e

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
)

// stallingAuditor fails the grant event and, as a Redis stall does to the
// audit stream and the ledger together, pauses Redis writes at that
// moment. It keeps every other event.
type stallingAuditor struct {
	rc *redis.Client
	mu sync.Mutex
	ev []broker.Event
}

func (a *stallingAuditor) Record(ctx context.Context, e broker.Event) error {
	if e.Type == "task.granted" {
		if err := a.rc.Do(ctx, "CLIENT", "PAUSE", "30000", "WRITE").Err(); err != nil {
			return err
		}
		return errors.New("audit stream timed out")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ev = append(a.ev, e)
	return nil
}

func (a *stallingAuditor) events() []broker.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]broker.Event(nil), a.ev...)
}

// TestRefusedDeclarationLeavesNothingLive guards issue 9 #13: a
// declaration answered 503 for a failed audit write left its task active
// in the ledger when the end could not be written either (a stall), and
// the reaper later ended it as "task.expired" with no grant in the trail.
// Now the task is kept and ended by the next reaper pass once the ledger
// answers, before its deadline, with a reason saying it was never granted.
func TestRefusedDeclarationLeavesNothingLive(t *testing.T) {
	srv := redistest.Start(t, redistest.WithAOF())
	// The auditor has its own connection to pause Redis with.
	a := &stallingAuditor{rc: redis.NewClient(&redis.Options{Addr: srv.Addr()})}
	t.Cleanup(func() { a.rc.Close() })
	e := newEnv(t, envOptions{auditor: a, redis: srv})

	r := e.declare(e.identity("agent-7"), `{"template":"triage","intent":"triage ticket 4521","tools":["tickets.read"],"ttl_seconds":600}`)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("declare with a stalled audit and ledger: %d %s", r.Status, r.Body)
	}
	if err := a.rc.Do(context.Background(), "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
	// The task could not be ended during the stall; it is active, not due.
	n, err := e.reaper.Once(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("reaper pass after the stall: ended %d, %v; want the refused task ended", n, err)
	}
	var ended []broker.Event
	for _, ev := range a.events() {
		if ev.Type == "task.revoked" {
			ended = append(ended, ev)
		}
	}
	if len(ended) != 1 || ended[0].Reason == "" || ended[0].Actor != "reaper" {
		t.Fatalf("audit of the refused task's end: %+v", ended)
	}
	t.Logf("trail: %s", ended[0].Reason)
	if task, _, err := e.raw.Task(context.Background(), ended[0].TaskID); err != nil || task.State != broker.StateRevoked {
		t.Fatalf("refused task in the ledger: %+v %v", task, err)
	}
}
