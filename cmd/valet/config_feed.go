package main

import (
	"fmt"
	"net"

	"github.com/valet-dev/valet/fanout"
)

// FeedConfig is the `feed:` block: what revocation-stream followers may
// cost (fanout.Limits; zero keeps the default).
type FeedConfig struct {
	MaxSubscribers          int `yaml:"max_subscribers"`
	MaxSubscribersPerClient int `yaml:"max_subscribers_per_client"`
	Backlog                 int `yaml:"backlog"`
	MaxCatchup              int `yaml:"max_catchup"`
	Readers                 int `yaml:"readers"`
}

func (f FeedConfig) limits() fanout.Limits {
	return fanout.Limits{MaxSubscribers: f.MaxSubscribers, MaxPerCaller: f.MaxSubscribersPerClient, Backlog: f.Backlog,
		MaxCatchup: f.MaxCatchup, Readers: f.Readers}
}

// MetricsConfig is the `metrics:` block: where /metrics is served and
// whether it needs a bearer secret.
type MetricsConfig struct {
	// Listen, when set, serves /metrics on this address only (not on addr).
	Listen string `yaml:"listen"`
	// BearerSecretEnv names an environment variable holding a secret that
	// /metrics then requires as "Authorization: Bearer <secret>".
	BearerSecretEnv string `yaml:"bearer_secret_env"`
}

func (c *Config) validateFeedMetrics(getenv func(string) string) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	for field, v := range map[string]int{"feed.max_subscribers": c.Feed.MaxSubscribers, "feed.max_subscribers_per_client": c.Feed.MaxSubscribersPerClient,
		"feed.backlog": c.Feed.Backlog, "feed.max_catchup": c.Feed.MaxCatchup, "feed.readers": c.Feed.Readers} {
		if v < 0 {
			bad(field, "must not be negative (0 keeps the default)")
		}
	}
	if c.Feed.Readers > 64 {
		bad("feed.readers", "must be at most 64 (each is a Redis connection)")
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			bad("metrics.listen", "%q must be host:port", c.Metrics.Listen)
		} else if c.Metrics.Listen == c.Addr {
			bad("metrics.listen", "must differ from addr")
		}
	}
	if c.Metrics.BearerSecretEnv != "" && len(getenv(c.Metrics.BearerSecretEnv)) < 16 {
		bad("metrics.bearer_secret_env", "environment variable %s must hold a secret of at least 16 characters", c.Metrics.BearerSecretEnv)
	}
	return errs
}
