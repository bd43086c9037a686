package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/policy"
)

const monitorRules = `
monitors:
  - name: burst-of-denials
    when: 'agent.denials_per_minute > 2'
    action: freeze_agent
  - name: first-task
    when: 'agent.declarations_per_minute >= 1 && agent.denials_per_minute == 0'
    action: alert
`

// TestMonitorFreezesThroughTheServer: an agent whose declarations are
// denied three times in a minute is frozen by the burst-of-denials rule
// (its next, valid, declaration answers 403), with monitor.triggered and
// control.set in the audit trail; an alert rule fired by a granted
// declaration shows in that task's timeline; the trigger counts in
// valet_monitor_triggers_total.
func TestMonitorFreezesThroughTheServer(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	o, ln, idp, _ := testOptions(t, clock)
	o.Now = time.Now
	r := withRedis(t, &o, time.Hour)
	controls, trail := r.controls, r.trail
	var err error
	if o.Templates, err = policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(testTemplate + monitorRules)}}, []string{"test"}); err != nil {
		t.Fatal(err)
	}
	log := &lockedBuffer{}
	o.Auditors = []broker.Auditor{audit.NewLog(trail), audit.NewLog(log)}
	o.Metrics = &MetricsOptions{}
	o.Monitor = &MonitorOptions{}
	s, err := New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = s.Run(ctx, ln) }()
	call := func(method, path, token, body string) (int, []byte) {
		req, _ := http.NewRequest(method, o.PublicURL+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, b
	}
	testkit.Eventually(t, func() bool { c, _ := call("GET", "/healthz", "", ""); return c == 200 }, "the server serves")
	declare := func(sub, tool string) (int, []byte) {
		tok := idp.Token(t, map[string]any{"sub": sub})
		return call("POST", "/v1/tasks", tok, `{"template":"triage","intent":"triage ticket 1","tools":["`+tool+`"],"ttl_seconds":60}`)
	}

	code, body := declare("good-agent", "tickets.read")
	if code != http.StatusCreated {
		t.Fatalf("good agent: %d %s", code, body)
	}
	var granted struct{ Task struct{ ID string } }
	_ = json.Unmarshal(body, &granted)
	testkit.Eventually(t, func() bool {
		evs, _ := trail.Timeline(t.Context(), granted.Task.ID)
		for _, e := range evs {
			if e.Type == "monitor.triggered" && e.Rule == "first-task" && e.Detail["agent"] == "good-agent" {
				return true
			}
		}
		return false
	}, "the alert shows in the task's timeline")

	for i := range 3 {
		if code, body := declare("bad-agent", "tickets.delete"); code != http.StatusForbidden {
			t.Fatalf("denied declaration %d: %d %s", i, code, body)
		}
	}
	testkit.Eventually(t, func() bool { cs, _ := controls.List(t.Context()); return len(cs) == 1 }, "the monitor freezes the agent")
	cs, _ := controls.List(t.Context())
	if cs[0].Kind != broker.ControlFreezeAgent || cs[0].Target != "bad-agent" || cs[0].Issuer != "test" ||
		cs[0].Reason != "monitor burst-of-denials" || cs[0].By != "admin:monitor/burst-of-denials" {
		t.Fatalf("control = %+v", cs[0])
	}
	if code, body := declare("bad-agent", "tickets.read"); code != http.StatusForbidden {
		t.Fatalf("frozen agent's valid declaration: %d %s, want 403", code, body)
	}
	if code, body := declare("good-agent", "tickets.read"); code != http.StatusCreated {
		t.Fatalf("another agent: %d %s, want 201", code, body)
	}
	var triggered, set bool
	for _, line := range strings.Split(log.String(), "\n") {
		var r struct{ Event broker.Event }
		_ = json.Unmarshal([]byte(line), &r)
		e := r.Event
		triggered = triggered || e.Type == "monitor.triggered" && e.Rule == "burst-of-denials" && e.Detail["agent"] == "bad-agent"
		set = set || e.Type == "control.set" && e.Actor == "admin:monitor/burst-of-denials"
	}
	if !triggered || !set {
		t.Fatalf("audit trail: monitor.triggered %v, control.set %v", triggered, set)
	}
	_, metrics := call("GET", "/metrics", "", "")
	if !strings.Contains(string(metrics), `valet_monitor_triggers_total{rule="burst-of-denials"} 1`) {
		t.Fatalf("metrics lack the trigger count:\n%s", metrics)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestMonitorRefusesUnlistedWebhook: a monitor whose webhook host is not on
// the allow-list refuses the start, naming the rule.
func TestMonitorRefusesUnlistedWebhook(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	o, _, _, _ := testOptions(t, clock)
	var err error
	if o.Templates, err = policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(testTemplate + `
monitors:
  - {name: page-ops, when: 'agent.denials_per_minute > 5', action: alert, webhook: 'https://hooks.example/x'}
`)}}, []string{"test"}); err != nil {
		t.Fatal(err)
	}
	o.Monitor = &MonitorOptions{AlertHosts: []string{"other.example"}}
	if _, err := New(t.Context(), o); err == nil || !strings.Contains(err.Error(), "monitor page-ops (t.yaml)") {
		t.Fatalf("New = %v, want the rule named", err)
	}
	o.Monitor.AlertHosts = []string{"hooks.example"}
	if _, err := New(t.Context(), o); err != nil {
		t.Fatalf("allowed host: %v", err)
	}
}
