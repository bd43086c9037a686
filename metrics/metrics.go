// Package metrics exposes Valet's Prometheus metrics on a private registry:
// declarations, live tasks and credentials, revocations, bulk revocation
// jobs, pending revocations and request latency. Every label takes its
// values from a fixed set (loaded template names, outcomes, reason classes,
// route patterns, standard HTTP methods, status classes), never from what a
// caller sent, so no request can add series; labels never hold secrets or
// token hashes.
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/valet-dev/valet/broker"
)

// Options supply the values metrics read on each scrape. Every field is
// optional.
type Options struct {
	// KnownTemplate says whether a name is a loaded template; other names
	// (an attacker's, in a denied declaration) are counted as "other", so
	// labels stay bounded.
	KnownTemplate func(string) bool
	// RunningJobs and FinishedJobs count this broker's bulk revocation jobs.
	RunningJobs  func() float64
	FinishedJobs func() float64
	// FeedSubscribers counts this broker's open revocation streams.
	FeedSubscribers func() float64
	// Pending counts revocations that failed at their source and wait in a
	// retry queue (the Vault issuer's).
	Pending func() float64
	// RevocationFailures counts attempts to revoke a credential at its
	// source that failed (first attempts and retries) since start.
	RevocationFailures func() float64
	// SightingsLost counts the agent sightings the inventory recorder
	// dropped (buffer full or a failed write) since start.
	SightingsLost func() float64
	// Live counts, in the ledger shared by every replica, the active tasks
	// whose deadline has not passed and the credentials they hold. It is
	// read at scrape time, at most once per LiveCacheFor; when it fails the
	// live gauges are left out of that scrape (absent, never a wrong
	// number). Nil leaves them out always.
	Live func(ctx context.Context) (tasks, creds int64, err error)
	// Logger receives a failure of Live (default: discarded).
	Logger *slog.Logger
	// Now is the clock of the Live cache (default time.Now).
	Now func() time.Time
}

// LiveCacheFor is how long one reading of Options.Live serves scrapes.
const LiveCacheFor = 5 * time.Second

// liveTimeout bounds one reading of Options.Live.
const liveTimeout = 2 * time.Second

// Metrics holds the collectors. It is safe for concurrent use.
type Metrics struct {
	reg          *prometheus.Registry
	declarations *prometheus.CounterVec
	revocations  *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	known        func(string) bool
}

// New registers every collector on a fresh registry.
func New(o Options) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		declarations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_declarations_total", Help: "Task declarations by outcome (granted, denied) and template.",
		}, []string{"outcome", "template"}),
		revocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "valet_revocations_total", Help: "Tasks revoked, by reason (rfc7009, bulk, audit_failure, other).",
		}, []string{"reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "valet_http_request_duration_seconds", Help: "HTTP request latency by route pattern, method and status class.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method", "status"}),
		known: o.KnownTemplate,
	}
	zero := func() float64 { return 0 }
	or := func(f func() float64) func() float64 {
		if f == nil {
			return zero
		}
		return f
	}
	if o.Live != nil {
		m.reg.MustRegister(newLiveCollector(o.Live, o.Logger, o.Now))
	}
	m.reg.MustRegister(m.declarations, m.revocations, m.duration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "valet_revocation_jobs", Help: "Bulk revocation jobs this broker is running now.",
			ConstLabels: prometheus.Labels{"state": "running"}}, or(o.RunningJobs)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "valet_revocation_jobs_finished_total", Help: "Bulk revocation jobs this broker finished."},
			or(o.FinishedJobs)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "valet_feed_subscribers", Help: "Revocation streams this broker serves now."},
			or(o.FeedSubscribers)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "valet_revocations_pending", Help: "Revocations that failed at their source and are queued for retry."},
			or(o.Pending)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "valet_revocation_failures_total",
			Help: "Attempts by this broker to revoke a credential at its source that failed (each is audited as revocation.failed at least once)."},
			or(o.RevocationFailures)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "valet_inventory_sightings_lost_total",
			Help: "Agent sightings this broker's inventory recorder dropped (buffer full or a failed write); the declarations themselves were not affected."},
			or(o.SightingsLost)),
	)
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Middleware times each request under its route pattern.
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		start := time.Now()
		next.ServeHTTP(ww, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		m.duration.WithLabelValues(route, methodLabel(r.Method), statusClass(status)).Observe(time.Since(start).Seconds())
	})
}

// methodLabel is the method if it is one of RFC 9110's and PATCH, else
// "OTHER": the method is whatever token the client sent, of any length.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "OTHER"
}

// statusClass is "1xx" to "5xx"; net/http allows only 100 to 999.
func statusClass(status int) string {
	if status < 100 || status > 599 {
		return "other"
	}
	return string(rune('0'+status/100)) + "xx"
}

// Auditor wraps an auditor and counts what its events report, once they
// are written.
func (m *Metrics) Auditor(next broker.Auditor) broker.Auditor {
	return auditor{next: next, m: m}
}

type auditor struct {
	next broker.Auditor
	m    *Metrics
}

func (a auditor) Record(ctx context.Context, e broker.Event) error {
	if err := a.next.Record(ctx, e); err != nil {
		return err
	}
	a.m.observe(e)
	return nil
}

func (m *Metrics) observe(e broker.Event) {
	switch e.Type {
	case "task.granted":
		m.declarations.WithLabelValues("granted", m.template(e.Template)).Inc()
	case "task.denied":
		m.declarations.WithLabelValues("denied", m.template(e.Template)).Inc()
	case "task.revoked":
		m.revocations.WithLabelValues(reasonClass(e.Reason)).Inc()
	}
}

func (m *Metrics) template(name string) string {
	if m.known != nil && m.known(name) {
		return name
	}
	return "other"
}

func reasonClass(reason string) string {
	switch {
	case strings.HasPrefix(reason, "bulk revocation"):
		return "bulk"
	case strings.HasPrefix(reason, "revoked by "):
		return "rfc7009"
	case reason == broker.RefusedReason:
		return "audit_failure"
	}
	return "other"
}

// liveCollector serves valet_tasks_live and valet_credentials_live from the
// ledger, so that they are right after a restart and the same on every
// replica (a per-process granted-minus-ended count went negative after a
// restart). One reading serves LiveCacheFor; concurrent scrapes share it.
type liveCollector struct {
	read  func(context.Context) (int64, int64, error)
	log   *slog.Logger
	now   func() time.Time
	tasks *prometheus.Desc
	creds *prometheus.Desc

	mu           sync.Mutex
	at           time.Time
	nTask, nCred int64
	ok           bool
}

func newLiveCollector(read func(context.Context) (int64, int64, error), log *slog.Logger, now func() time.Time) *liveCollector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &liveCollector{read: read, log: log, now: now,
		tasks: prometheus.NewDesc("valet_tasks_live", "Active tasks whose deadline has not passed, read from the ledger (all replicas).", nil, nil),
		creds: prometheus.NewDesc("valet_credentials_live", "Credentials held by active tasks whose deadline has not passed, read from the ledger (all replicas; do not sum over replicas).", nil, nil),
	}
}

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.tasks; ch <- c.creds }

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ok || c.now().Sub(c.at) >= LiveCacheFor || c.now().Before(c.at) {
		ctx, cancel := context.WithTimeout(context.Background(), liveTimeout)
		tasks, creds, err := c.read(ctx)
		cancel()
		c.at, c.ok = c.now(), err == nil
		if err != nil {
			c.log.Warn("metrics: cannot count live tasks in the ledger; valet_tasks_live and valet_credentials_live left out", "err", err)
		}
		c.nTask, c.nCred = max(tasks, 0), max(creds, 0)
	}
	if c.ok {
		ch <- prometheus.MustNewConstMetric(c.tasks, prometheus.GaugeValue, float64(c.nTask))
		ch <- prometheus.MustNewConstMetric(c.creds, prometheus.GaugeValue, float64(c.nCred))
	}
}

// Register adds a collector of another package (ssf's SET counter) to the
// registry /metrics serves.
func (m *Metrics) Register(c prometheus.Collector) error { return m.reg.Register(c) }
