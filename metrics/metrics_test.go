package metrics

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
)

// router is a small chi surface timed by m, shaped like Valet's.
func router(m *Metrics) http.Handler {
	r := chi.NewRouter()
	r.Use(m.Middleware)
	r.NotFound(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNotFound) })
	r.MethodNotAllowed(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusMethodNotAllowed) })
	r.Get("/v1/tasks/{id}", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	r.Post("/v1/tasks", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusCreated) })
	return r
}

// series lists the label sets of the request-duration histogram.
func series(t *testing.T, m *Metrics) []map[string]string {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]string
	for _, mf := range mfs {
		if mf.GetName() != "valet_http_request_duration_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out = append(out, l)
		}
	}
	return out
}

const tokenChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"

func randomToken(r *rand.Rand, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = tokenChars[r.IntN(len(tokenChars))]
	}
	return string(b)
}

// TestLabelsComeFromAFixedSet guards issue 9 #3: the method label was the
// method as sent, so every new method (of any length) made a new series.
// 1,000 distinct random methods and paths, then 1,000 more, must leave the
// series count where it was, under a bound that does not depend on N.
func TestLabelsComeFromAFixedSet(t *testing.T) {
	m := New(Options{})
	h := router(m)
	rng := rand.New(rand.NewPCG(1, 2))
	send := func(n int) {
		for range n {
			method := randomToken(rng, 1+rng.IntN(40))
			if rng.IntN(4) == 0 {
				method = []string{"GET", "POST", "DELETE"}[rng.IntN(3)]
			}
			path := "/" + randomToken(rng, 1+rng.IntN(30))
			switch rng.IntN(3) {
			case 0:
				path = "/v1/tasks/" + randomToken(rng, 10)
			case 1:
				path = "/v1/tasks"
			}
			req := httptest.NewRequest(http.MethodGet, "http://valet"+strings.ReplaceAll(path, "%", "p"), nil)
			req.Method = method
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
	}
	send(1000)
	first := series(t, m)
	send(1000)
	second := series(t, m)
	// routes (2 patterns + unmatched) × methods (9 + OTHER) × status classes
	const bound = 3 * 10 * 5
	if len(second) != len(first) || len(second) > bound {
		t.Fatalf("series grew from %d to %d (bound %d)", len(first), len(second), bound)
	}
	for _, l := range second {
		switch l["route"] {
		case "/v1/tasks/{id}", "/v1/tasks", "unmatched":
		default:
			t.Errorf("route label %q is not a route pattern", l["route"])
		}
		if methodLabel(l["method"]) != l["method"] {
			t.Errorf("method label %q is not in the fixed set", l["method"])
		}
		if len(l["status"]) != 3 {
			t.Errorf("status label %q is not a class", l["status"])
		}
	}
}

// TestHugeMethodThroughARealListener guards issue 9 #3 over the wire: a
// 64 KiB method reaches the middleware through net/http and is counted as
// OTHER.
func TestHugeMethodThroughARealListener(t *testing.T) {
	m := New(Options{})
	srv := httptest.NewServer(router(m))
	defer srv.Close()
	before := len(series(t, m))
	for i := range 3 {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		method := strings.Repeat(string(rune('A'+i)), 64<<10)
		fmt.Fprintf(conn, "%s /v1/tasks/x HTTP/1.1\r\nHost: valet\r\nConnection: close\r\n\r\n", method)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		conn.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("status %d, want 405 (the request must reach the router)", resp.StatusCode)
		}
	}
	got := series(t, m)
	if len(got) != before+1 {
		t.Fatalf("three huge methods made %d series, want 1", len(got)-before)
	}
	for _, l := range got {
		if l["method"] != "OTHER" {
			t.Errorf("method label is %d bytes, want OTHER", len(l["method"]))
		}
	}
}

// TestLiveGaugeReadsTheLedger guards the Low finding: the live gauges come
// from the ledger (never a per-process count that goes negative), one
// reading serves LiveCacheFor, and a failed reading leaves them out.
func TestLiveGaugeReadsTheLedger(t *testing.T) {
	clock := testkit.NewClock(time.Unix(1_700_000_000, 0))
	reads, tasks, fail := 0, int64(3), false
	m := New(Options{Now: clock.Now, Live: func(context.Context) (int64, int64, error) {
		reads++
		if fail {
			return 0, 0, errors.New("redis down")
		}
		return tasks, 2 * tasks, nil
	}})
	scrape := func() string {
		rec := httptest.NewRecorder()
		m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		return rec.Body.String()
	}
	if s := scrape(); !strings.Contains(s, "valet_tasks_live 3\n") || !strings.Contains(s, "valet_credentials_live 6\n") {
		t.Fatalf("first scrape:\n%s", s)
	}
	tasks = 1
	if s := scrape(); !strings.Contains(s, "valet_credentials_live 6\n") || reads != 1 {
		t.Fatalf("within the cache: %d reads\n%s", reads, s)
	}
	clock.Advance(LiveCacheFor)
	if s := scrape(); !strings.Contains(s, "valet_credentials_live 2\n") || reads != 2 {
		t.Fatalf("after the cache: %d reads", reads)
	}
	clock.Advance(LiveCacheFor)
	fail = true
	if s := scrape(); strings.Contains(s, "valet_credentials_live") {
		t.Fatalf("a failed reading must leave the gauge out:\n%s", s)
	}
}

func TestReasonClass(t *testing.T) {
	for _, tc := range []struct{ reason, want string }{
		{"bulk revocation by alice: incident 7", "bulk"},
		{"revoked by client-1", "rfc7009"},
		{broker.RefusedReason, "audit_failure"},
		{"deadline passed", "other"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if got := reasonClass(tc.reason); got != tc.want {
				t.Fatalf("reasonClass(%q) = %q, want %q", tc.reason, got, tc.want)
			}
		})
	}
}
