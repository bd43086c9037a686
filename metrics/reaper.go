package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ReaperLag returns the observer for reconcile.ReaperConfig.Lag: it registers
// valet_reaper_lag_seconds, the time from a task's deadline to the moment
// the reaper ended it. Call it once.
func (m *Metrics) ReaperLag() func(time.Duration) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "valet_reaper_lag_seconds",
		Help:    "Seconds from a task's deadline to its end by the reaper (its credentials expire by themselves at the deadline; this is how late the ledger and the feed catch up).",
		Buckets: []float64{.05, .1, .25, .5, 1, 2, 5, 10, 30, 60},
	})
	m.reg.MustRegister(h)
	return func(d time.Duration) { h.Observe(max(d, 0).Seconds()) }
}
