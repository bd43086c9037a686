package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/policy"
)

// trail is an auditor that keeps what it is given.
type trail struct {
	mu     sync.Mutex
	events []broker.Event
	fail   error
}

func (t *trail) Record(_ context.Context, e broker.Event) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fail != nil {
		return t.fail
	}
	t.events = append(t.events, e)
	return nil
}

func (t *trail) ofType(typ string) []broker.Event {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []broker.Event
	for _, e := range t.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// controls keeps the controls put.
type controls struct {
	mu  sync.Mutex
	put []broker.Control
	err error
}

func (c *controls) PutControl(_ context.Context, _ incident.AdminPrincipal, ctl broker.Control, _, _ bool) (broker.Control, *incident.RevocationJob, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return broker.Control{}, nil, c.err
	}
	c.put = append(c.put, ctl)
	return ctl, nil, nil
}

func rules(t *testing.T, body string) func() []*policy.Monitor {
	t.Helper()
	set, err := policy.Load([]policy.File{{Name: "m.yaml", Data: []byte(`templates: []
monitors:
` + body)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return set.Monitors
}

func denied(subject string) broker.Event {
	return broker.Event{Type: "task.denied", Actor: subject, Issuer: "test", Template: "t"}
}

func newMonitor(t *testing.T, cfg Config) (*Monitor, *trail, *controls, *testkit.Clock) {
	t.Helper()
	tr, ctl := &trail{}, &controls{}
	clock := testkit.NewClock(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC))
	cfg.Auditor, cfg.Controls, cfg.Now = tr, ctl, clock.Now
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m, tr, ctl, clock
}

// TestCountersSlide: each kind of event adds to its counters, the window
// forgets events a minute old, distinct tools count once.
func TestCountersSlide(t *testing.T) {
	m, _, _, clock := newMonitor(t, Config{Rules: func() []*policy.Monitor { return nil }})
	ctx := t.Context()
	for _, e := range []broker.Event{
		denied("a"), denied("a"),
		{Type: "task.granted", Actor: "a", Issuer: "test", TaskID: "task_1"},
		{Type: "tool.called", Actor: "client", Issuer: "test", Detail: map[string]any{"agent": "a", "tool": "x"}},
		{Type: "tool.called", Actor: "client", Issuer: "test", Detail: map[string]any{"agent": "a", "tool": "x"}},
		{Type: "tool.called", Actor: "client", Issuer: "test", Detail: map[string]any{"agent": "a", "tool": "y"}},
		{Type: "action.denied", Actor: "a", Issuer: "test"},
		{Type: "task.delegated", Actor: "a", Issuer: "test"},
		{Type: "control.set", Actor: "a", Issuer: "test"}, // not counted
		denied("b"),
	} {
		m.observe(ctx, e)
	}
	a := m.agents[agentKey{"test", "a"}].Value.(*agent)
	want := map[string]int64{"declarations_per_minute": 3, "denials_per_minute": 3, "tool_calls_per_minute": 3,
		"distinct_tools_per_minute": 2, "action_requests_per_minute": 1, "delegations_per_minute": 1}
	if got := a.counters(clock.Now()); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("counters = %v, want %v", got, want)
	}
	clock.Advance(30 * time.Second)
	m.observe(ctx, denied("a"))
	if got := a.counters(clock.Now())["denials_per_minute"]; got != 4 {
		t.Fatalf("after 30s: denials = %d, want 4", got)
	}
	clock.Advance(31 * time.Second)
	got := a.counters(clock.Now())
	if got["denials_per_minute"] != 1 || got["distinct_tools_per_minute"] != 0 || got["declarations_per_minute"] != 1 {
		t.Fatalf("after 61s: %v, want only the late denial", got)
	}
}

// TestRuleFiresOncePerWindow: the sixth denial fires the rule (audited with
// the counters, the agent frozen); more denials within the minute do not
// fire it again; a minute later they do.
func TestRuleFiresOncePerWindow(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, tr, ctl, clock := newMonitor(t, Config{Registerer: reg, Rules: rules(t, `  - name: burst
    when: 'agent.denials_per_minute > 5'
    action: freeze_agent
`)})
	ctx := t.Context()
	for i := range 5 {
		m.observe(ctx, denied("a"))
		if n := len(tr.ofType("monitor.triggered")); n != 0 {
			t.Fatalf("fired after %d denials", i+1)
		}
	}
	m.observe(ctx, denied("b")) // another agent's denial counts for it alone
	m.observe(ctx, denied("a"))
	trig := tr.ofType("monitor.triggered")
	if len(trig) != 1 || trig[0].Rule != "burst" || trig[0].Issuer != "test" || trig[0].Detail["agent"] != "a" ||
		trig[0].Detail["counters"].(map[string]any)["denials_per_minute"] != int64(6) {
		t.Fatalf("triggers = %+v", trig)
	}
	if len(ctl.put) != 1 || ctl.put[0].Kind != broker.ControlFreezeAgent || ctl.put[0].Target != "a" || ctl.put[0].Issuer != "test" {
		t.Fatalf("controls = %+v", ctl.put)
	}
	for range 10 {
		clock.Advance(time.Second)
		m.observe(ctx, denied("a"))
	}
	if n := len(tr.ofType("monitor.triggered")); n != 1 {
		t.Fatalf("fired %d times within the cool-down, want 1", n)
	}
	clock.Advance(Window)
	for range 6 {
		m.observe(ctx, denied("a"))
	}
	if n := len(tr.ofType("monitor.triggered")); n != 2 {
		t.Fatalf("fired %d times after the cool-down, want 2", n)
	}
	if v := testutil.ToFloat64(m.triggers.WithLabelValues("burst")); v != 2 {
		t.Fatalf("valet_monitor_triggers_total{rule=burst} = %v, want 2", v)
	}
}

// TestAlertAndFailedFreeze: an alert rule freezes nothing; a failed freeze
// is logged and the monitor carries on.
func TestAlertAndFailedFreeze(t *testing.T) {
	m, tr, ctl, _ := newMonitor(t, Config{Rules: rules(t, `  - name: any-denial
    when: 'agent.denials_per_minute >= 1'
    action: alert
  - name: two
    when: 'agent.denials_per_minute >= 2'
    action: freeze_agent
`)})
	ctl.err = errors.New("control store down")
	m.observe(t.Context(), denied("a"))
	m.observe(t.Context(), denied("a"))
	trig := tr.ofType("monitor.triggered")
	if len(trig) != 2 || trig[0].Outcome != "alert" || trig[1].Outcome != "freeze_agent" || len(ctl.put) != 0 {
		t.Fatalf("triggers = %+v, controls = %+v", trig, ctl.put)
	}
}

// TestRecordNeverBlocks: Record returns the auditor's error, hands written
// events over without blocking, and counts the drops of a full buffer.
func TestRecordNeverBlocks(t *testing.T) {
	m, tr, _, _ := newMonitor(t, Config{Buffer: 2, Rules: func() []*policy.Monitor { return nil }})
	for range 5 {
		if err := m.Record(t.Context(), denied("a")); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Record(t.Context(), broker.Event{Type: "control.set"}); err != nil {
		t.Fatal(err)
	}
	if m.Dropped() != 3 || len(tr.events) != 6 {
		t.Fatalf("dropped %d of 5, wrote %d of 6", m.Dropped(), len(tr.events))
	}
	tr.fail = errors.New("audit down")
	if err := m.Record(t.Context(), denied("a")); !errors.Is(err, tr.fail) || m.Dropped() != 3 {
		t.Fatalf("Record = %v, dropped %d: an unwritten event must fail and not be observed", err, m.Dropped())
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	testkit.Eventually(t, func() bool { return len(m.ch) == 0 }, "Run drains the buffer")
	cancel()
	<-done
}

// TestAgentsBounded: past MaxAgents the least recently seen agent is
// forgotten and counted; values too long to be an agent are not tracked.
func TestAgentsBounded(t *testing.T) {
	m, _, _, _ := newMonitor(t, Config{MaxAgents: 3, Rules: func() []*policy.Monitor { return nil }})
	for _, s := range []string{"a", "b", "c", "a", "d", strings.Repeat("x", maxValue+1)} {
		m.observe(t.Context(), denied(s))
	}
	if len(m.agents) != 3 || m.Evicted() != 1 {
		t.Fatalf("tracking %d agents, evicted %d; want 3 and 1", len(m.agents), m.Evicted())
	}
	if _, ok := m.agents[agentKey{"test", "b"}]; ok {
		t.Fatal("b, the least recently seen, is still tracked")
	}
}

// TestDistinctToolsSaturate: an agent calling endless distinct tools holds
// at most maxTools in memory.
func TestDistinctToolsSaturate(t *testing.T) {
	m, _, _, clock := newMonitor(t, Config{Rules: func() []*policy.Monitor { return nil }})
	for i := range maxTools + 50 {
		m.observe(t.Context(), broker.Event{Type: "tool.called", Issuer: "test", Detail: map[string]any{"agent": "a", "tool": fmt.Sprint("t", i)}})
	}
	a := m.agents[agentKey{"test", "a"}].Value.(*agent)
	if len(a.tools) != maxTools || a.counters(clock.Now())["distinct_tools_per_minute"] != maxTools {
		t.Fatalf("holding %d tools", len(a.tools))
	}
}

func TestNewRejectsNil(t *testing.T) {
	if _, err := New(Config{Rules: func() []*policy.Monitor { return nil }}); err == nil {
		t.Error("nil auditor accepted")
	}
	if _, err := New(Config{Auditor: &trail{}}); err == nil {
		t.Error("nil rules accepted")
	}
}

// TestTaskCounters: task counters count the events of one task alone; a
// rule over them fires with that task's id; events of no task see zeros;
// tasks are bounded as agents are.
func TestTaskCounters(t *testing.T) {
	m, tr, _, _ := newMonitor(t, Config{MaxAgents: 2, Rules: rules(t, `  - name: chatty-task
    when: 'task.tool_calls_per_minute > 3'
    action: alert
`)})
	call := func(task string) broker.Event {
		return broker.Event{Type: "tool.called", Issuer: "test", TaskID: task, Detail: map[string]any{"agent": "a", "tool": "x"}}
	}
	for _, e := range []broker.Event{call("task_1"), call("task_1"), call("task_2"), call("task_2"), call(""), call("task_1")} {
		m.observe(t.Context(), e)
	}
	if n := len(tr.ofType("monitor.triggered")); n != 0 {
		t.Fatalf("fired with 3 calls per task (6 for the agent): %d", n)
	}
	m.observe(t.Context(), call("task_1"))
	trig := tr.ofType("monitor.triggered")
	if len(trig) != 1 || trig[0].TaskID != "task_1" || trig[0].Rule != "chatty-task" {
		t.Fatalf("triggers = %+v", trig)
	}
	m.observe(t.Context(), call("task_3"))
	if len(m.tasks) != 2 || m.Evicted() != 1 {
		t.Fatalf("tracking %d tasks, evicted %d; want 2 and 1", len(m.tasks), m.Evicted())
	}
}

// TestEvalErrorLoggedOncePerWindow: a rule that fails to evaluate (a
// division by a zero counter) does not fire and is logged once a minute,
// not once an event.
func TestEvalErrorLoggedOncePerWindow(t *testing.T) {
	var logs strings.Builder
	m, tr, _, clock := newMonitor(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil)), Rules: rules(t, `  - name: ratio
    when: 'agent.denials_per_minute / agent.action_requests_per_minute > 1'
    action: alert
`)})
	for range 10 {
		m.observe(t.Context(), denied("a"))
	}
	clock.Advance(Window)
	m.observe(t.Context(), denied("a"))
	if n := strings.Count(logs.String(), "monitor rule failed to evaluate"); n != 2 || len(tr.ofType("monitor.triggered")) != 0 {
		t.Fatalf("logged %d times, triggers %d; want 2 and 0:\n%s", n, len(tr.ofType("monitor.triggered")), logs.String())
	}
}
