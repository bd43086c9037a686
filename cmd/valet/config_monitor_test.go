package main

import (
	"strings"
	"testing"
)

// TestMonitorConfigBounds: out-of-range monitor bounds are reported at
// their paths with the rest of the config's problems.
func TestMonitorConfigBounds(t *testing.T) {
	p := writeFile(t, t.TempDir(), "bad.yaml", `
public_url: not-a-url
monitor:
  buffer: -1
  max_agents: 2000000
  alert_hosts: [hooks.example.com, 'https://hooks.example.com/x']
`)
	_, err := loadConfig(p, func(string) string { return "" })
	if err == nil {
		t.Fatal("bad config loaded")
	}
	for _, want := range []string{"public_url", "monitor.buffer: -1 is out of range", "monitor.max_agents: 2000000 is out of range", "monitor.alert_hosts[1]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "monitor.alert_hosts[0]") {
		t.Errorf("a valid host refused:\n%v", err)
	}
	if err := (MonitorConfig{Buffer: 100, MaxAgents: 0}).validate(); err != nil {
		t.Errorf("valid bounds refused: %v", err)
	}
}
