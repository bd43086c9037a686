package policy

import (
	"strings"
	"testing"
	"time"
)

const monitorTemplate = `templates:
  - name: t
    principals: [{issuer: dev}]
    ttl: {default: 1m, max: 5m}
    tools: [tickets.read]
    audiences: [https://tools.example.com]
monitors:
`

func TestMonitorsLoadAndFire(t *testing.T) {
	set, err := Load([]File{{Name: "m.yaml", Data: []byte(monitorTemplate + `  - name: burst-of-denials
    when: 'agent.denials_per_minute > 5 || agent.distinct_tools_per_minute > 20'
    action: freeze_agent
  - name: night
    when: 'now.getHours() < 6 && agent.declarations_per_minute > 0'
    action: alert
    webhook: https://alerts.example/hook
`)}}, testIssuers)
	if err != nil {
		t.Fatal(err)
	}
	ms := set.Monitors()
	if len(ms) != 2 || ms[0].Name != "burst-of-denials" || ms[0].Action != MonitorFreezeAgent || ms[1].Action != MonitorAlert || ms[1].Webhook != "https://alerts.example/hook" || ms[0].Webhook != "" || ms[0].Source != "m.yaml" {
		t.Fatalf("monitors: %+v", ms)
	}
	noon := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		m        *Monitor
		counters map[string]int64
		now      time.Time
		want     bool
	}{
		{"five denials do not fire", ms[0], map[string]int64{"denials_per_minute": 5}, noon, false},
		{"six denials fire", ms[0], map[string]int64{"denials_per_minute": 6}, noon, true},
		{"21 distinct tools fire", ms[0], map[string]int64{"distinct_tools_per_minute": 21}, noon, true},
		{"declaring at noon does not fire", ms[1], map[string]int64{"declarations_per_minute": 1}, noon, false},
		{"declaring at 3 fires", ms[1], map[string]int64{"declarations_per_minute": 1}, noon.Add(-9 * time.Hour), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := map[string]int64{}
			for _, k := range MonitorCounters {
				c[k] = 0
			}
			for k, v := range tc.counters {
				c[k] = v
			}
			got, err := tc.m.Fires(c, c, tc.now)
			if err != nil || got != tc.want {
				t.Fatalf("Fires = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestMonitorRequireApprovalAndSSFLoad: require_approval takes its for, and
// ssf: true marks a rule whose firings go out as SETs.
func TestMonitorRequireApprovalAndSSFLoad(t *testing.T) {
	set, err := Load([]File{{Name: "m.yaml", Data: []byte(monitorTemplate + `  - name: odd-tools
    when: 'agent.distinct_tools_per_minute > 3'
    action: require_approval
    for: 15m
    ssf: true
`)}}, testIssuers)
	if err != nil {
		t.Fatal(err)
	}
	ms := set.Monitors()
	if len(ms) != 1 || ms[0].Action != MonitorRequireApproval || ms[0].For != 15*time.Minute || !ms[0].SSF {
		t.Fatalf("monitors: %+v", ms)
	}
}

// TestMonitorsRefused: a bad monitor refuses the whole set, with file, line
// and field.
func TestMonitorsRefused(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"unknown counter", "  - name: x\n    when: 'agent.denails_per_minute > 5'\n    action: alert\n",
			"m.yaml:9: monitors[0].when: invalid CEL"},
		{"not bool", "  - name: x\n    when: 'agent.denials_per_minute + 1'\n    action: alert\n", "must evaluate to bool"},
		{"syntax", "  - name: x\n    when: 'agent.denials_per_minute >'\n    action: alert\n", "m.yaml:9: monitors[0].when"},
		{"unknown action", "  - name: x\n    when: 'true'\n    action: reboot\n", "m.yaml:10: monitors[0].action: unknown action"},
		{"bad name", "  - name: 'Bad Name'\n    when: 'true'\n    action: alert\n", "monitors[0].name"},
		{"duplicate", "  - name: x\n    when: 'true'\n    action: alert\n  - name: x\n    when: 'true'\n    action: alert\n", "already defined at m.yaml:8"},
		{"missing when", "  - name: x\n    action: alert\n", "monitors[0].when: is required"},
		{"webhook not a URL", "  - name: x\n    when: 'true'\n    action: alert\n    webhook: 'ftp://h/x'\n", "m.yaml:11: monitors[0].webhook: webhook must be an https"},
		{"webhook with user", "  - name: x\n    when: 'true'\n    action: alert\n    webhook: 'https://u:p@h/x'\n", "must not carry user info"},
		{"unknown key", "  - name: x\n    when: 'true'\n    action: alert\n    then: y\n", "monitors[0].then: unknown field"},
		{"require_approval without for", "  - name: x\n    when: 'true'\n    action: require_approval\n", "m.yaml:8: monitors[0].for: is required with action require_approval"},
		{"for on alert", "  - name: x\n    when: 'true'\n    action: alert\n    for: 5m\n", "monitors[0].for: only applies to action require_approval"},
		{"for too short", "  - name: x\n    when: 'true'\n    action: require_approval\n    for: 10ms\n", "monitors[0].for: must be at least 1s"},
		{"for too long", "  - name: x\n    when: 'true'\n    action: require_approval\n    for: 25h\n", "monitors[0].for: 25h0m0s is longer than the limit"},
		{"ssf not bool", "  - name: x\n    when: 'true'\n    action: alert\n    ssf: yes\n", "monitors[0].ssf: must be true or false"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := Load([]File{{Name: "m.yaml", Data: []byte(monitorTemplate + tc.body)}}, testIssuers)
			if set != nil || err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load = %v, %v; want an error containing %q", set, err, tc.want)
			}
		})
	}
}
