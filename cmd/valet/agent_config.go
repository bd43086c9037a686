package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/stepup"
)

// ApprovalsConfig is the `approvals:` block: who may approve, how long an
// approval stays pending, and where to announce new ones.
type ApprovalsConfig struct {
	Clients    []ClientEntry `yaml:"clients"`
	Timeout    Duration      `yaml:"timeout"`
	WebhookURL string        `yaml:"webhook_url"`
	// MaxPendingPerTask and MaxPendingPerAgent cap the approvals pending at
	// once (default 8 per task, 32 per agent; one more is 429).
	MaxPendingPerTask  int `yaml:"max_pending_per_task"`
	MaxPendingPerAgent int `yaml:"max_pending_per_agent"`
}

// agentConfig builds the sensitive-action settings from `resources:` and
// `approvals:`, reporting every problem at once.
func (c *Config) agentConfig(getenv func(string) string) (server.StepUpOptions, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	for id, labels := range c.Resources {
		if id == "" || len(id) > 256 {
			bad("resources", "resource id %q must have 1 to 256 bytes", id)
		}
		for k := range labels {
			if k == "id" {
				bad("resources."+id, `the label name "id" is reserved (it holds the resource id)`)
			}
		}
	}
	a := c.Approvals
	if t := time.Duration(a.Timeout); t < 0 || t > 24*time.Hour {
		bad("approvals.timeout", "must be from 0 (default 5m) to 24h")
	}
	if a.MaxPendingPerTask < 0 || a.MaxPendingPerTask > 1000 {
		bad("approvals.max_pending_per_task", "must be from 0 (default %d) to 1000", stepup.DefaultMaxPendingPerTask)
	}
	if a.MaxPendingPerAgent < 0 || a.MaxPendingPerAgent > 1000 {
		bad("approvals.max_pending_per_agent", "must be from 0 (default %d) to 1000", stepup.DefaultMaxPendingPerAgent)
	}
	if a.WebhookURL != "" {
		if u, err := url.Parse(a.WebhookURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("approvals.webhook_url", "must be an absolute http(s) URL")
		}
	}
	var clients []clientauth.Client
	for i, cl := range a.Clients {
		field := fmt.Sprintf("approvals.clients[%d]", i)
		var sum [32]byte
		switch {
		case cl.ID == "":
			bad(field+".id", "is required")
			continue
		case cl.SecretEnv != "":
			v := getenv(cl.SecretEnv)
			if len(v) < 16 {
				bad(field, "environment variable %s must hold a secret of at least 16 characters", cl.SecretEnv)
				continue
			}
			sum = sha256.Sum256([]byte(v))
		default:
			b, err := hex.DecodeString(cl.SecretSHA256)
			if err != nil || len(b) != 32 {
				bad(field+".secret_sha256", "must be 64 hex digits (or set secret_env)")
				continue
			}
			copy(sum[:], b)
		}
		if isPublishedSecret(sum) {
			bad(field, "%s", publishedSecretMsg)
			continue
		}
		clients = append(clients, clientauth.Client{ID: cl.ID, SecretSHA256: sum})
	}
	if err := errors.Join(errs...); err != nil {
		return server.StepUpOptions{}, err
	}
	return server.StepUpOptions{
		Resources: c.Resources,
		Approvals: stepup.ApprovalConfig{Clients: clients, Timeout: time.Duration(a.Timeout), WebhookURL: a.WebhookURL,
			MaxPendingPerTask: a.MaxPendingPerTask, MaxPendingPerAgent: a.MaxPendingPerAgent},
	}, nil
}
