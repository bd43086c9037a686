package main

import (
	"fmt"
	"strings"
)

// RollbackConfig is the `rollback:` block: the hosts (host or host:port)
// whose undo webhooks `valet tasks rollback` may call. Empty: none.
type RollbackConfig struct {
	AllowedHosts []string `yaml:"allowed_hosts"`
}

// validate reports hosts that are not a bare host or host:port.
func (r RollbackConfig) validate() []error {
	var errs []error
	for i, h := range r.AllowedHosts {
		if h == "" || strings.ContainsAny(h, "/?#@ ") {
			errs = append(errs, fmt.Errorf("rollback.allowed_hosts[%d]: %q must be a host or host:port", i, h))
		}
	}
	return errs
}

// splitList splits a comma-separated flag value, dropping empty parts.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
