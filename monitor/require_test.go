package monitor

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// approvalsRec records the requirements asked of it.
type approvalsRec struct {
	mu    sync.Mutex
	calls []string
	until []time.Time
	err   error
}

func (a *approvalsRec) RequireApproval(_ context.Context, issuer, agent, rule, taskID string, until time.Time) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, issuer+"/"+agent+"/"+rule+"/"+taskID)
	a.until = append(a.until, until)
	return a.err
}

// signalsRec records the triggers sent to SSF.
type signalsRec struct {
	mu       sync.Mutex
	triggers []Trigger
}

func (s *signalsRec) Trigger(_ context.Context, t Trigger) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.triggers = append(s.triggers, t)
	return nil
}

// TestRequireApprovalAndSSF: a require_approval rule asks for a requirement
// of the agent until now + its for (with the task of the firing event),
// audited as monitor.triggered with the action; a rule marked ssf: true
// sends its firing to the SSF transmitter, one without does not; no
// freeze is put. A failing requirement is still audited as triggered.
func TestRequireApprovalAndSSF(t *testing.T) {
	ap, sig := &approvalsRec{}, &signalsRec{}
	m, tr, ctl, clock := newMonitor(t, Config{Approvals: ap, Signals: sig, Rules: rules(t, `  - name: burst
    when: 'agent.denials_per_minute >= 2'
    action: require_approval
    for: 15m
    ssf: true
  - name: quiet
    when: 'agent.denials_per_minute >= 2'
    action: alert
`)})
	ctx := t.Context()
	e := denied("a")
	e.TaskID = "task_9"
	m.observe(ctx, e)
	m.observe(ctx, e)
	if len(ap.calls) != 1 || ap.calls[0] != "test/a/burst/task_9" || !ap.until[0].Equal(clock.Now().Add(15*time.Minute)) {
		t.Fatalf("requirements = %v until %v", ap.calls, ap.until)
	}
	if len(sig.triggers) != 1 || sig.triggers[0].Rule != "burst" || sig.triggers[0].Agent != "a" || sig.triggers[0].TaskID != "task_9" ||
		sig.triggers[0].Action != "require_approval" {
		t.Fatalf("SSF triggers = %+v", sig.triggers)
	}
	if len(ctl.put) != 0 {
		t.Fatalf("controls = %+v", ctl.put)
	}
	if ev := tr.ofType("monitor.triggered"); len(ev) != 2 || ev[0].Outcome != "require_approval" || ev[0].TaskID != "task_9" {
		t.Fatalf("monitor.triggered = %+v", ev)
	}
	ap.err = errors.New("redis down")
	m.observe(ctx, denied("b"))
	m.observe(ctx, denied("b"))
	if len(ap.calls) != 2 || len(tr.ofType("monitor.triggered")) != 4 {
		t.Fatalf("a failing requirement: calls %v, triggered %d", ap.calls, len(tr.ofType("monitor.triggered")))
	}
}
