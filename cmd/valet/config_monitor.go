package main

import (
	"errors"
	"fmt"
	"strings"
)

// maxMonitorBound caps monitor.buffer and monitor.max_agents: each tracked
// agent holds about 2 KiB.
const maxMonitorBound = 1 << 20

// MonitorConfig is the `monitor:` block: the bounds of continuous
// monitoring. The rules themselves are the templates' `monitors:`
// (docs/signals.md); with none, the monitor only counts.
//
//	monitor:
//	  buffer: 4096      # audit events waiting to be observed; past it they are dropped and counted
//	  max_agents: 4096  # agents tracked; past it the least recently seen is forgotten and counted
//	  alert_hosts: [hooks.example.com]  # hosts whose webhooks monitor rules may call
type MonitorConfig struct {
	Buffer     int      `yaml:"buffer"`
	MaxAgents  int      `yaml:"max_agents"`
	AlertHosts []string `yaml:"alert_hosts"`
}

// validate reports every bound out of range.
func (c MonitorConfig) validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{{"monitor.buffer", c.Buffer}, {"monitor.max_agents", c.MaxAgents}} {
		if f.v < 0 || f.v > maxMonitorBound {
			errs = append(errs, fmt.Errorf("%s: %d is out of range (0 keeps the default, 4096; at most %d)", f.name, f.v, maxMonitorBound))
		}
	}
	for i, h := range c.AlertHosts {
		if h == "" || len(h) > 255 || strings.ContainsAny(h, "/?#@ ") {
			errs = append(errs, fmt.Errorf("monitor.alert_hosts[%d]: %q must be a host or host:port", i, displayHost(h)))
		}
	}
	return errors.Join(errs...)
}

// displayHost bounds a configured host for an error message.
func displayHost(h string) string {
	if len(h) > 64 {
		return h[:64] + "..."
	}
	return h
}
