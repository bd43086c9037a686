// Package metrics exposes Valet's Prometheus metrics on a private registry:
// declarations, live credentials, revocations, bulk revocation jobs,
// pending revocations and request latency. Labels carry template names,
// outcomes, reasons and route patterns, never secrets or token hashes.
package metrics

import (
	"context"
	"net/http"
	"strings"
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
	// Pending counts revocations that failed at their source and wait in a
	// retry queue (the Vault issuer's).
	Pending func() float64
}

// Metrics holds the collectors. It is safe for concurrent use.
type Metrics struct {
	reg          *prometheus.Registry
	declarations *prometheus.CounterVec
	live         prometheus.Gauge
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
		live: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "valet_credentials_live",
			Help: "Credentials granted minus credentials ended, as seen by this broker; sum over replicas for the total.",
		}),
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
	m.reg.MustRegister(m.declarations, m.live, m.revocations, m.duration,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "valet_revocation_jobs", Help: "Bulk revocation jobs this broker is running now.",
			ConstLabels: prometheus.Labels{"state": "running"}}, or(o.RunningJobs)),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "valet_revocation_jobs_finished_total", Help: "Bulk revocation jobs this broker finished."},
			or(o.FinishedJobs)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "valet_revocations_pending", Help: "Revocations that failed at their source and are queued for retry."},
			or(o.Pending)),
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
		m.duration.WithLabelValues(route, r.Method, string(rune('0'+status/100))+"xx").Observe(time.Since(start).Seconds())
	})
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
		m.live.Add(float64(len(e.Creds)))
	case "task.denied":
		m.declarations.WithLabelValues("denied", m.template(e.Template)).Inc()
	case "task.completed", "task.expired", "task.revoked":
		m.live.Sub(float64(len(e.Creds)))
		if e.Type == "task.revoked" {
			m.revocations.WithLabelValues(reasonClass(e.Reason)).Inc()
		}
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
	case reason == "audit write failed":
		return "audit_failure"
	}
	return "other"
}
