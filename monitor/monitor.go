// Package monitor watches agents' behaviour as the audit trail records it
// (declarations, denials, tool calls, action requests, delegations), keeps
// per-agent counters over the last minute, and acts when an ops-written
// rule (policy.Monitor) fires: it audits monitor.triggered, then freezes the
// agent through the incident controls, makes its sensitive actions need a
// human approval for a while, or only alerts (webhook, SSF). It never blocks or
// fails the request that caused an event.
package monitor

import (
	"bytes"
	"container/list"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/policy"
)

// Window is the span of every counter, and the cool-down of a rule for an
// agent: a rule fires at most once per Window per agent.
const Window = time.Minute

// Defaults of Config.
const (
	DefaultBuffer    = 4096
	DefaultMaxAgents = 4096
	// maxTools bounds the distinct tools remembered per agent: past it,
	// distinct_tools_per_minute stays at maxTools.
	maxTools = 256
	// maxValue bounds a client-sent value (agent, tool) kept or audited.
	maxValue = 128
	// webhookTimeout bounds one webhook call.
	webhookTimeout = 5 * time.Second
	// actTimeout bounds one action (a freeze and its revocations), so a
	// down dependency cannot stall the monitor for long.
	actTimeout = 15 * time.Second
)

// Controls are the incident controls a freeze goes through
// (incident.Admin). Safe for concurrent use.
type Controls interface {
	PutControl(ctx context.Context, who incident.AdminPrincipal, c broker.Control, revoke, force bool) (broker.Control, *incident.RevocationJob, error)
}

// Approvals take require_approval actions (stepup.Service). Safe for
// concurrent use.
type Approvals interface {
	RequireApproval(ctx context.Context, issuer, agent, rule, taskID string, until time.Time) error
}

// Trigger is one firing of a rule, as a rule marked ssf: true sends it to
// the SSF transmitter.
type Trigger struct {
	Rule   string
	Action policy.MonitorAction
	Issuer string // the agent's issuer (a name of issuers:)
	Agent  string
	TaskID string
	Time   time.Time
}

// Signals sends triggers as SETs (ssf.Transmitter). Safe for concurrent
// use.
type Signals interface {
	Trigger(ctx context.Context, t Trigger) error
}

// Config configures a Monitor.
type Config struct {
	// Auditor is where Record writes events, and where monitor.triggered
	// is recorded. Required.
	Auditor broker.Auditor
	// Rules returns the rules in force (they change on a template reload).
	// Required.
	Rules func() []*policy.Monitor
	// Controls takes freeze_agent actions; nil makes them fail (audited
	// and logged).
	Controls Controls
	// Approvals takes require_approval actions; nil makes them fail
	// (audited and logged).
	Approvals Approvals
	// Signals sends the firings of rules marked ssf: true; nil leaves them
	// unsent (logged at Error).
	Signals Signals
	// Buffer bounds the events waiting to be observed (0: DefaultBuffer);
	// past it events are dropped and counted.
	Buffer int
	// MaxAgents bounds the agents tracked (0: DefaultMaxAgents); past it
	// the least recently seen is forgotten and counted.
	MaxAgents int
	// AlertHosts are the hosts (host or host:port, compared lower-case)
	// whose webhooks rules may call. Empty: none is called.
	AlertHosts []string
	// Client calls the webhooks (default: one that follows no redirects);
	// each call is bounded by webhookTimeout.
	Client *http.Client
	// Registerer, when set, receives the monitor's metrics.
	Registerer prometheus.Registerer
	Now        func() time.Time
	Logger     *slog.Logger
}

// Monitor is an auditor decorator that observes every event it writes.
// Record is safe for concurrent use; Run is the one goroutine that counts
// and evaluates.
type Monitor struct {
	cfg    Config
	ch     chan broker.Event
	agents map[agentKey]*list.Element
	lru    *list.List                 // front: most recently seen *agent
	tasks  map[agentKey]*list.Element // the tasks' windows, keyed by {"", task id}
	tlru   *list.List
	// evalErrs is when each rule's evaluation error was last logged: at
	// most once a Window per rule (a division by a zero counter would
	// otherwise log on every event).
	evalErrs map[string]time.Time
	dropped  atomic.Uint64
	evicted  atomic.Uint64

	triggers *prometheus.CounterVec
	drops    prometheus.CounterFunc
	evicts   prometheus.CounterFunc
}

type agentKey struct{ issuer, subject string }

// The counters, in policy.MonitorCounters order.
const (
	cDeclarations = iota
	cDenials
	cToolCalls
	cDistinctTools // not bucketed: computed from tools
	cActionRequests
	cDelegations
	nCounters
)

type bucket struct {
	sec    int64
	counts [nCounters]uint32
}

// agent is the window of one agent's events (or one task's: then fired
// stays empty).
type agent struct {
	key     agentKey
	buckets [60]bucket
	tools   map[string]time.Time // tool -> last seen
	fired   map[string]time.Time // rule -> last fired
}

// New checks cfg and returns a Monitor; start Run to observe.
func New(cfg Config) (*Monitor, error) {
	if cfg.Auditor == nil {
		return nil, errors.New("monitor: auditor cannot be nil")
	}
	if cfg.Rules == nil {
		return nil, errors.New("monitor: rules cannot be nil")
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	if cfg.MaxAgents <= 0 {
		cfg.MaxAgents = DefaultMaxAgents
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	hosts := make([]string, 0, len(cfg.AlertHosts))
	for _, h := range cfg.AlertHosts {
		hosts = append(hosts, strings.ToLower(strings.TrimSpace(h)))
	}
	cfg.AlertHosts = hosts
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Monitor{cfg: cfg, ch: make(chan broker.Event, cfg.Buffer), agents: map[agentKey]*list.Element{}, lru: list.New(),
		tasks: map[agentKey]*list.Element{}, tlru: list.New(), evalErrs: map[string]time.Time{}}
	m.triggers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "valet_monitor_triggers_total",
		Help: "Monitor rules fired, by rule (the names come from the template files)."}, []string{"rule"})
	m.drops = prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "valet_monitor_events_dropped_total",
		Help: "Audit events the monitor dropped because its buffer was full."}, func() float64 { return float64(m.dropped.Load()) })
	m.evicts = prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "valet_monitor_agents_evicted_total",
		Help: "Agents and tasks the monitor forgot to stay within its bound on tracked agents (and tasks)."}, func() float64 { return float64(m.evicted.Load()) })
	if r := cfg.Registerer; r != nil {
		for _, c := range []prometheus.Collector{m.triggers, m.drops, m.evicts} {
			if err := r.Register(c); err != nil {
				return nil, fmt.Errorf("monitor: registering metrics: %w", err)
			}
		}
	}
	return m, nil
}

// CheckRules reports the rules whose webhook host is not on AlertHosts
// (the names, for a clear refusal at start).
func (m *Monitor) CheckRules(rules []*policy.Monitor) error {
	var errs []error
	for _, r := range rules {
		if r.Webhook != "" && !m.allowed(r.Webhook) {
			errs = append(errs, fmt.Errorf("monitor %s (%s): its webhook's host is not on monitor.alert_hosts", r.Name, r.Source))
		}
	}
	return errors.Join(errs...)
}

func (m *Monitor) allowed(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return false
	}
	return slices.Contains(m.cfg.AlertHosts, strings.ToLower(u.Host)) || slices.Contains(m.cfg.AlertHosts, strings.ToLower(u.Hostname()))
}

// Record writes e through the configured auditor and, once it is written,
// hands it to the monitor without blocking (a full buffer drops it and
// counts the loss). Its error is the auditor's alone.
func (m *Monitor) Record(ctx context.Context, e broker.Event) error {
	if err := m.cfg.Auditor.Record(ctx, e); err != nil {
		return err
	}
	if _, ok := kinds[e.Type]; !ok {
		return nil
	}
	select {
	case m.ch <- e:
	default:
		m.dropped.Add(1)
	}
	return nil
}

// Dropped counts the events dropped since start; Evicted the agents
// forgotten.
func (m *Monitor) Dropped() uint64 { return m.dropped.Load() }
func (m *Monitor) Evicted() uint64 { return m.evicted.Load() }

// Run observes events until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-m.ch:
			m.observe(ctx, e)
		}
	}
}

// kinds are the event types the monitor counts, with the counters each
// adds to.
var kinds = map[string][]int{
	"task.granted":           {cDeclarations},
	"task.denied":            {cDeclarations, cDenials},
	"task.renewal_denied":    {cDenials},
	"tool.called":            {cToolCalls},
	"approval.requested":     {cActionRequests},
	"action.granted":         {cActionRequests},
	"action.denied":          {cActionRequests, cDenials},
	"task.delegated":         {cDelegations},
	"task.delegation_denied": {cDelegations, cDenials},
}

// subjectOf is the agent an event is about ("" for none).
func subjectOf(e broker.Event) string {
	if e.Type == "tool.called" { // the actor is whoever reported it
		s, _ := e.Detail["agent"].(string)
		return s
	}
	return e.Actor
}

// observe counts e and evaluates the rules for its agent.
func (m *Monitor) observe(ctx context.Context, e broker.Event) {
	subject := subjectOf(e)
	if subject == "" || e.Issuer == "" || len(subject) > maxValue || len(e.Issuer) > maxValue {
		return
	}
	now := m.cfg.Now()
	a := m.touch(m.agents, m.lru, agentKey{e.Issuer, subject})
	a.count(e, now)
	var task *agent
	if e.TaskID != "" && len(e.TaskID) <= maxValue {
		task = m.touch(m.tasks, m.tlru, agentKey{subject: e.TaskID})
		task.count(e, now)
	}
	rules := m.cfg.Rules()
	if len(rules) == 0 {
		return
	}
	counters := a.counters(now)
	var taskCounters map[string]int64
	if task != nil {
		taskCounters = task.counters(now)
	} else {
		taskCounters = (&agent{}).counters(now) // an event of no task: zeros
	}
	var vars map[string]any // built once for every rule, when one is due
	for _, r := range rules {
		if last, ok := a.fired[r.Name]; ok && now.Sub(last) < Window {
			continue
		}
		if vars == nil {
			agentVars := make(map[string]any, len(counters))
			for k, v := range counters {
				agentVars[k] = v
			}
			taskVars := make(map[string]any, len(taskCounters))
			for k, v := range taskCounters {
				taskVars[k] = v
			}
			vars = map[string]any{"agent": agentVars, "task": taskVars, "now": now}
		}
		fires, err := r.When.Eval(vars)
		if err != nil {
			if last, ok := m.evalErrs[r.Name]; !ok || now.Sub(last) >= Window {
				m.evalErrs[r.Name] = now
				if len(m.evalErrs) > policy.MaxMonitors*4 { // rules renamed by reloads
					clear(m.evalErrs)
				}
				m.cfg.Logger.WarnContext(ctx, "monitor rule failed to evaluate (logged once a minute per rule)", "rule", r.Name, "error", err)
			}
			continue
		}
		if !fires {
			continue
		}
		if a.fired == nil {
			a.fired = map[string]time.Time{}
		}
		a.fired[r.Name] = now
		m.trigger(ctx, r, a.key, e.TaskID, counters, now)
	}
}

// touch returns the window of k in index (most recently seen at the front
// of lru), tracking it (and forgetting the least recently seen past
// MaxAgents) when new.
func (m *Monitor) touch(index map[agentKey]*list.Element, lru *list.List, k agentKey) *agent {
	if el, ok := index[k]; ok {
		lru.MoveToFront(el)
		return el.Value.(*agent)
	}
	for lru.Len() >= m.cfg.MaxAgents {
		old := lru.Back()
		lru.Remove(old)
		delete(index, old.Value.(*agent).key)
		m.evicted.Add(1)
	}
	a := &agent{key: k}
	index[k] = lru.PushFront(a)
	return a
}

// count adds e to the window at now.
func (a *agent) count(e broker.Event, now time.Time) {
	sec := now.Unix()
	b := &a.buckets[sec%int64(len(a.buckets))]
	if b.sec != sec {
		*b = bucket{sec: sec}
	}
	for _, c := range kinds[e.Type] {
		b.counts[c]++
	}
	if e.Type == "tool.called" {
		if tool, _ := e.Detail["tool"].(string); tool != "" && len(tool) <= maxValue {
			a.seeTool(tool, now)
		}
	}
}

func (a *agent) seeTool(tool string, now time.Time) {
	if a.tools == nil {
		a.tools = map[string]time.Time{}
	}
	if _, ok := a.tools[tool]; !ok && len(a.tools) >= maxTools {
		for t, at := range a.tools {
			if now.Sub(at) >= Window {
				delete(a.tools, t)
			}
		}
		if len(a.tools) >= maxTools {
			return // saturated: the count stays at maxTools
		}
	}
	a.tools[tool] = now
}

// counters are the agent's counters over the Window ending at now.
func (a *agent) counters(now time.Time) map[string]int64 {
	var sums [nCounters]int64
	sec := now.Unix()
	for i := range a.buckets {
		b := &a.buckets[i]
		if b.sec > sec-int64(len(a.buckets)) && b.sec <= sec {
			for c, n := range b.counts {
				sums[c] += int64(n)
			}
		}
	}
	for _, at := range a.tools {
		if now.Sub(at) < Window {
			sums[cDistinctTools]++
		}
	}
	out := make(map[string]int64, nCounters)
	for i, name := range policy.MonitorCounters {
		out[name] = sums[i]
	}
	return out
}

// trigger audits the firing of rule r for agent k, then takes its action.
func (m *Monitor) trigger(ctx context.Context, r *policy.Monitor, k agentKey, taskID string, counters map[string]int64, now time.Time) {
	m.triggers.WithLabelValues(r.Name).Inc()
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), actTimeout)
	defer cancel()
	values := make(map[string]any, len(counters))
	for name, v := range counters {
		values[name] = v
	}
	ev := broker.Event{Time: now.UTC(), Type: "monitor.triggered", Actor: "monitor", Issuer: k.issuer, TaskID: taskID,
		Rule: r.Name, Outcome: string(r.Action), Detail: map[string]any{"agent": printable(k.subject), "action": string(r.Action), "counters": values}}
	if err := m.cfg.Auditor.Record(actx, ev); err != nil {
		m.cfg.Logger.ErrorContext(ctx, "monitor trigger not audited", "rule", r.Name, "agent", printable(k.subject), "error", err)
	}
	log := m.cfg.Logger.With("rule", r.Name, "agent", printable(k.subject), "issuer", printable(k.issuer), "action", r.Action)
	if r.Webhook != "" {
		m.notify(actx, log, r, ev)
	}
	if r.SSF {
		if m.cfg.Signals == nil {
			log.ErrorContext(ctx, "monitor rule fired but no SET was sent: the SSF transmitter is off")
		} else if err := m.cfg.Signals.Trigger(actx, Trigger{Rule: r.Name, Action: r.Action, Issuer: k.issuer, Agent: k.subject,
			TaskID: taskID, Time: now.UTC()}); err != nil {
			log.ErrorContext(ctx, "monitor rule fired but its SET was not queued", "error", err)
		}
	}
	switch r.Action {
	case policy.MonitorAlert:
		log.WarnContext(ctx, "monitor rule fired")
	case policy.MonitorFreezeAgent:
		if m.cfg.Controls == nil {
			log.ErrorContext(ctx, "monitor rule fired but cannot freeze: the incident controls are off")
			return
		}
		who := incident.AdminPrincipal{Issuer: "monitor", Subject: r.Name, Role: incident.RoleResponder}
		_, _, err := m.cfg.Controls.PutControl(actx, who, broker.Control{Kind: broker.ControlFreezeAgent, Target: k.subject,
			Issuer: k.issuer, Reason: "monitor " + r.Name}, true, true)
		if err != nil {
			log.ErrorContext(ctx, "monitor rule fired but the freeze failed", "error", err)
			return
		}
		log.WarnContext(ctx, "monitor rule fired: agent frozen")
	case policy.MonitorRequireApproval:
		if m.cfg.Approvals == nil {
			log.ErrorContext(ctx, "monitor rule fired but cannot require approval: sensitive actions are off")
			return
		}
		until := now.Add(r.For)
		if err := m.cfg.Approvals.RequireApproval(actx, k.issuer, k.subject, r.Name, taskID, until); err != nil {
			log.ErrorContext(ctx, "monitor rule fired but the approval requirement failed", "error", err)
			return
		}
		log.WarnContext(ctx, "monitor rule fired: the agent's sensitive actions need approval", "until", until)
	}
}

// notify POSTs the trigger event to the rule's webhook when its host is
// allowed. Only the host is ever logged: a webhook's path or query may
// hold a secret.
func (m *Monitor) notify(ctx context.Context, log *slog.Logger, r *policy.Monitor, ev broker.Event) {
	u, _ := url.Parse(r.Webhook)
	host := ""
	if u != nil {
		host = printable(u.Host)
	}
	if !m.allowed(r.Webhook) {
		log.ErrorContext(ctx, "monitor webhook not called: its host is not on monitor.alert_hosts", "webhook_host", host)
		return
	}
	body, err := json.Marshal(ev)
	if err != nil {
		log.ErrorContext(ctx, "monitor webhook not called: encoding the alert", "error", err)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, webhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(wctx, http.MethodPost, r.Webhook, bytes.NewReader(body))
	if err != nil {
		log.ErrorContext(ctx, "monitor webhook not called", "webhook_host", host, "error", err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := m.cfg.Client.Do(req)
	if err != nil {
		log.ErrorContext(ctx, "monitor webhook failed", "webhook_host", host, "error", redact(err, r.Webhook))
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		log.ErrorContext(ctx, "monitor webhook refused the alert", "webhook_host", host, "status", resp.StatusCode)
	}
}

// redact replaces the webhook URL in a client error with its host.
func redact(err error, raw string) string {
	msg := err.Error()
	if u, perr := url.Parse(raw); perr == nil {
		msg = strings.ReplaceAll(msg, raw, u.Scheme+"://"+u.Host+"/...")
		msg = strings.ReplaceAll(msg, strconv.Quote(raw), u.Scheme+"://"+u.Host+"/...")
	}
	return printable(msg)
}

// printable bounds a client-sent value for logs and audit: at most
// maxValue bytes, control characters replaced.
func printable(s string) string {
	if len(s) > maxValue {
		s = s[:maxValue]
	}
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return '?'
		}
		return r
	}, s)
}
