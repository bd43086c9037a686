package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

// freezeRules is a template whose agents normally read tickets, and a
// behaviour rule for "a burst of denials, then an unusual tool". The rule
// language has no "a tool this agent never used" (issue 16 asks for "an
// unusual tool"); the counters give distinct tools per minute, so the rule
// reads "three denials and a second distinct tool within a minute": an
// agent that only ever reads tickets has one.
const freezeRules = `
  - name: ops
    principals: [{issuer: test}]
    ttl: {default: 1m, max: 5m}
    tools: [tickets.read, tickets.export]
    audiences: [https://tools.example.com]
monitors:
  - name: denials-then-new-tool
    when: 'agent.denials_per_minute >= 3 && agent.distinct_tools_per_minute >= 2'
    action: freeze_agent
`

// freezeHarness is the assembled server on real Redis with freezeRules,
// driven over HTTP as agents drive it. Its methods return errors rather
// than failing the test, so goroutines may use them.
type freezeHarness struct {
	url      string
	idp      *oidctest.Issuer
	clock    *testkit.Clock
	controls *revocation.Controls
	client   *http.Client
}

func startFreezeHarness(tb testing.TB) *freezeHarness {
	tb.Helper()
	clock := testkit.NewClock(time.Now())
	o, ln, idp, _ := testOptions(tb, clock)
	o.Now = time.Now
	r := withRedis(tb, &o, time.Hour)
	ledger, controls, trail := r.ledger, r.controls, r.trail
	var err error
	if o.Templates, err = policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(testTemplate + freezeRules)}}, []string{"test"}); err != nil {
		tb.Fatal(err)
	}
	o.Records = ledger
	o.Auditors = []broker.Auditor{audit.NewLog(trail)}
	o.Monitor = &MonitorOptions{}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := New(ctx, o)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx, ln) }()
	tb.Cleanup(func() { cancel(); <-done })
	h := &freezeHarness{url: o.PublicURL, idp: idp, clock: clock, controls: controls,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}}
	testkit.Eventually(tb, func() bool { c, _, err := h.call("GET", "/healthz", "", ""); return err == nil && c == 200 }, "the server serves")
	return h
}

func (h *freezeHarness) call(method, path, token, body string) (int, []byte, error) {
	req, err := http.NewRequest(method, h.url+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// declared is the answer to a declaration: the status, and the task id and
// task token when granted, else the error body.
type declared struct {
	code      int
	id, token string
	body      []byte
}

// declare declares an ops task for agent sub with one tool.
func (h *freezeHarness) declare(tb testing.TB, sub, tool string) (declared, error) {
	// The identity verifier runs on the test's frozen clock.
	tok := h.idp.Token(tb, map[string]any{"sub": sub}, oidctest.WithNow(h.clock.Now()))
	code, body, err := h.call("POST", "/v1/tasks", tok, `{"template":"ops","intent":"work ticket 1","tools":["`+tool+`"],"ttl_seconds":60}`)
	if err != nil || code != http.StatusCreated {
		return declared{code: code, body: body}, err
	}
	var r struct {
		Task        struct{ ID string }
		Credentials []struct {
			AccessToken string `json:"access_token"`
		}
	}
	if err := json.Unmarshal(body, &r); err != nil || len(r.Credentials) == 0 || r.Credentials[0].AccessToken == "" {
		return declared{code: code}, fmt.Errorf("declaration answer without a task token: %v", err)
	}
	return declared{code: code, id: r.Task.ID, token: r.Credentials[0].AccessToken}, nil
}

// useTool declares a task for tool and reports one call of it with the task
// token, as the agent does; the report's answer is the event the monitor
// counts as a distinct tool.
func (h *freezeHarness) useTool(tb testing.TB, sub, tool string) (id, token string, err error) {
	d, err := h.declare(tb, sub, tool)
	if err != nil || d.code != http.StatusCreated {
		return "", "", fmt.Errorf("declaring %s for %s: %d %s %v", tool, sub, d.code, d.body, err)
	}
	id, token = d.id, d.token
	code, body, err := h.call("POST", "/v1/tasks/"+id+"/events", token, `{"tool":"`+tool+`","outcome":"ok"}`)
	if err != nil || code != http.StatusCreated {
		return "", "", fmt.Errorf("reporting %s for %s: %d %s %v", tool, sub, code, body, err)
	}
	return id, token, nil
}

// misbehave runs one trial for a fresh agent sub: a normal tool call, a
// burst of three denied declarations, then a call of an unusual tool (the
// triggering event: after its answer the rule holds). It returns the time
// from that answer until the agent's next valid declaration is refused
// 403, polling every 10 ms for at most limit.
func (h *freezeHarness) misbehave(tb testing.TB, sub string, limit time.Duration) (time.Duration, error) {
	if _, _, err := h.useTool(tb, sub, "tickets.read"); err != nil {
		return 0, err
	}
	for i := range 3 {
		if d, err := h.declare(tb, sub, "tickets.delete"); err != nil || d.code != http.StatusForbidden {
			return 0, fmt.Errorf("denied declaration %d of %s: %d %s %v", i, sub, d.code, d.body, err)
		}
	}
	if _, _, err := h.useTool(tb, sub, "tickets.export"); err != nil {
		return 0, err
	}
	trigger := time.Now()
	for {
		d, err := h.declare(tb, sub, "tickets.read")
		if err != nil {
			return 0, err
		}
		if d.code == http.StatusForbidden && strings.Contains(string(d.body), "agent "+sub+" is frozen") {
			return time.Since(trigger), nil
		}
		if d.code != http.StatusCreated {
			return 0, fmt.Errorf("valid declaration of %s: %d %s, want 201 or 403 frozen", sub, d.code, d.body)
		}
		if time.Since(trigger) > limit {
			return 0, fmt.Errorf("%s not frozen %s after the triggering event", sub, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// behave runs a well-behaved agent until stop: declare, report the usual
// tool, complete; it returns the first refusal, and the rounds done.
func (h *freezeHarness) behave(tb testing.TB, sub string, stop <-chan struct{}) (int, error) {
	for n := 0; ; n++ {
		select {
		case <-stop:
			return n, nil
		default:
		}
		id, token, err := h.useTool(tb, sub, "tickets.read")
		if err != nil {
			return n, err
		}
		if code, body, err := h.call("POST", "/v1/tasks/"+id+"/complete", token, ""); err != nil || code != http.StatusOK {
			return n, fmt.Errorf("completing %s of %s: %d %s %v", id, sub, code, body, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// frozen reports whether sub is under a freeze_agent control set by the
// rule.
func (h *freezeHarness) frozen(ctx context.Context, sub string) (bool, error) {
	cs, err := h.controls.List(ctx)
	if err != nil {
		return false, err
	}
	return slices.ContainsFunc(cs, func(c broker.Control) bool {
		return c.Kind == broker.ControlFreezeAgent && c.Target == sub && c.By == "admin:monitor/denials-then-new-tool"
	}), nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	return sorted[int(p*float64(len(sorted)-1)+0.5)]
}

// TestMonitorFreezesWithinASecond is issue 16's measured test: over 20
// trials a scripted misbehaving agent (a burst of denials, then an unusual
// tool) is frozen by a behaviour rule, while a well-behaved agent working
// through the same server the whole time is never refused. The latency
// from the triggering event to the first refused declaration is logged
// (p50/p95/max); the 1 s goal is measured in
// BenchmarkMonitorTriggerToFreeze, and the test fails only when a freeze
// does not come within a generous 10 s.
func TestMonitorFreezesWithinASecond(t *testing.T) {
	h := startFreezeHarness(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var goodRounds int
	var goodErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		goodRounds, goodErr = h.behave(t, "good-agent", stop)
	}()
	const trials = 20
	lat := make([]time.Duration, 0, trials)
	var trialErr error
	for i := range trials {
		sub := fmt.Sprintf("bad-agent-%d", i)
		d, err := h.misbehave(t, sub, 10*time.Second)
		if err != nil {
			trialErr = fmt.Errorf("trial %d: %w", i, err)
			break
		}
		if ok, err := h.frozen(t.Context(), sub); err != nil || !ok {
			trialErr = fmt.Errorf("trial %d: %s refused but not under the rule's freeze (%v)", i, sub, err)
			break
		}
		lat = append(lat, d)
	}
	close(stop)
	wg.Wait()
	if trialErr != nil {
		t.Fatal(trialErr)
	}
	if goodErr != nil {
		t.Fatalf("the well-behaved agent was refused after %d rounds: %v", goodRounds, goodErr)
	}
	if goodRounds == 0 {
		t.Fatal("the well-behaved agent did no work alongside the trials")
	}
	if ok, err := h.frozen(t.Context(), "good-agent"); err != nil || ok {
		t.Fatalf("good-agent frozen = %v (%v)", ok, err)
	}
	slices.Sort(lat)
	t.Logf("trigger to freeze over %d trials: p50 %s, p95 %s, max %s (well-behaved agent: %d rounds, never refused)",
		len(lat), percentile(lat, 0.50), percentile(lat, 0.95), lat[len(lat)-1], goodRounds)
}

// BenchmarkMonitorTriggerToFreeze measures issue 16's 1 s goal: the time
// from the answer to a misbehaving agent's triggering tool call until its
// next declaration is refused, reported as trigger-to-freeze-ms (the mean)
// and max-ms; each iteration is one fresh agent's whole trial.
func BenchmarkMonitorTriggerToFreeze(b *testing.B) {
	h := startFreezeHarness(b)
	var total, worst time.Duration
	n := 0
	for b.Loop() {
		d, err := h.misbehave(b, fmt.Sprintf("bench-agent-%d", n), 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		total += d
		worst = max(worst, d)
		n++
	}
	if n == 0 {
		b.Fatal(errors.New("no iterations"))
	}
	b.ReportMetric(float64(total.Microseconds())/float64(n)/1000, "trigger-to-freeze-ms")
	b.ReportMetric(float64(worst.Microseconds())/1000, "max-ms")
}
