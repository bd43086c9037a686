package e2e

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestProxyOverhead measures, in one run, the latency a request through
// `valet proxy` adds over a direct call to the same upstream (p50/p99 of
// sequential calls) and the throughput of both (8 concurrent clients).
// The figures are logged (docs/proxy.md quotes them); nothing about time
// is asserted, only that every call succeeded.
func TestProxyOverhead(t *testing.T) {
	pe := newProxyEnv(t)
	_, handle := pe.declareVia(t, "tickets.read")
	n := 2000
	if testing.Short() {
		n = 300
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	call := func(url, bearer string) error {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return &statusError{resp.StatusCode}
		}
		return nil
	}
	modes := []struct{ name, url, bearer string }{
		{"direct", pe.up.URL + "/api/tickets/1", ""},
		{"proxied", pe.url + "/u/tickets/tickets/1", handle},
	}
	lat := map[string][]time.Duration{}
	for _, m := range modes {
		for i := 0; i < n; i++ {
			start := time.Now()
			if err := call(m.url, m.bearer); err != nil {
				t.Fatalf("%s call %d: %v", m.name, i, err)
			}
			lat[m.name] = append(lat[m.name], time.Since(start))
		}
	}
	rps := map[string]float64{}
	for _, m := range modes {
		var done atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for done.Add(1) <= int64(n) {
					if err := call(m.url, m.bearer); err != nil {
						t.Errorf("%s: %v", m.name, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		rps[m.name] = float64(n) / time.Since(start).Seconds()
	}
	d, p := lat["direct"], lat["proxied"]
	t.Logf("\n| mode | p50 | p99 | throughput (8 clients) |\n|---|---|---|---|\n| direct | %s | %s | %.0f req/s |\n| proxied | %s | %s | %.0f req/s |\n| added | %s | %s | %.2fx of direct |",
		pct(d, 50), pct(d, 99), rps["direct"], pct(p, 50), pct(p, 99), rps["proxied"], pct(p, 50)-pct(d, 50), pct(p, 99)-pct(d, 99), rps["proxied"]/rps["direct"])
}

type statusError struct{ status int }

func (e *statusError) Error() string { return http.StatusText(e.status) }
