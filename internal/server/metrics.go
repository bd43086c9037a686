package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/valet-dev/valet/broker/httpapi"
	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/metrics"
)

// httpMetrics is the metrics of the main listener: it times requests and,
// unless /metrics has a listener of its own, serves /metrics.
func (s *Server) httpMetrics() httpapi.Metrics {
	if s.o.Metrics.Listener != nil {
		return routedMetrics{s.metrics, nil}
	}
	return routedMetrics{s.metrics, metricsHandler(s.metrics, s.o.Metrics.BearerSecret)}
}

// metricsHandler is /metrics, behind the bearer secret when one is set.
func metricsHandler(m *metrics.Metrics, secret string) http.Handler {
	h := m.Handler()
	if secret == "" {
		return h
	}
	want := sha256.Sum256([]byte(secret))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, _ := dpop.AccessToken(r, dpop.Bearer)
		sum := sha256.Sum256([]byte(got))
		if got == "" || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
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
// handler it serves (nil: none, /metrics is served on its own listener).
type routedMetrics struct {
	*metrics.Metrics
	h http.Handler
}

func (m routedMetrics) Handler() http.Handler { return m.h }

// serveMetrics serves /metrics alone on ln until ctx ends.
func (s *Server) serveMetrics(ctx context.Context, ln net.Listener) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metricsHandler(s.metrics, s.o.Metrics.BearerSecret))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
		MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics listener failed", "err", err)
		}
	}()
	s.log.Info("metrics serving", "addr", ln.Addr().String())
}
