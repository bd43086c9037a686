package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/metrics"
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

// metricsHandler is /metrics, behind the bearer secret when one is set.
func metricsHandler(m *metrics.Metrics, secret string) http.Handler {
	h := m.Handler()
	if secret == "" {
		return h
	}
	want := sha256.Sum256([]byte(secret))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="metrics"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"unauthenticated","message":"metrics require the metrics bearer secret"}` + "\n"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// routedMetrics is the metrics of the main listener with the /metrics
// handler it serves (nil: none, /metrics is served on metrics.listen).
type routedMetrics struct {
	*metrics.Metrics
	h http.Handler
}

func (m routedMetrics) Handler() http.Handler { return m.h }

// serveMetrics serves h at /metrics on addr until ctx ends.
func serveMetrics(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics.listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
		MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener failed", "err", err)
		}
	}()
	log.Info("metrics serving", "addr", ln.Addr().String())
	return nil
}
