package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// workload makes the i-th request of a run. Requests must be independent:
// workers call it concurrently.
type workload struct {
	name   string
	want   int                    // expected status
	check  func(body string) bool // optional check of the answer's first 200 bytes
	newReq func(i int) (*http.Request, error)
	// forAgents, when set, replaces newReq for a cell of n workers (the
	// table's agents), e.g. one identity token per agent.
	forAgents func(n int) func(i int) (*http.Request, error)
	// before and after run around the cell, unmeasured: a cache purge, an
	// audit device enabled and disabled.
	before, after func() error
	// meter, when set, is read as the measured window opens and after it
	// closed; the result holds the difference.
	meter func() meterSample
}

// meterSample is what a cell costs besides time: CPU of this process
// (broker and load generator alike), of redis-server and of Vault, and
// the identity cache's lookups.
type meterSample struct {
	self, redis, vault time.Duration
	hits, misses       uint64
	ok                 bool
}

func (a meterSample) sub(b meterSample) meterSample {
	return meterSample{self: a.self - b.self, redis: a.redis - b.redis, vault: a.vault - b.vault,
		hits: a.hits - b.hits, misses: a.misses - b.misses, ok: a.ok && b.ok}
}

// selfCPU is this process's user and system CPU so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// result is one cell: a workload at one concurrency for one run.
type result struct {
	ops        int
	errs       int
	firstErr   string
	elapsed    time.Duration
	p50, p99   time.Duration
	p999       time.Duration
	throughput float64 // successful requests per second
	requests   int     // requests sent in the measured window, answered well or not
	use        meterSample
}

// run drives w with n closed-loop workers: each sends a request, waits for
// the whole answer, and sends the next. The first warmup is not counted.
// Every latency of the measured window is kept and sorted for percentiles.
func run(ctx context.Context, w workload, n int, warmup, d time.Duration) result {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        n * 2,
		MaxIdleConnsPerHost: n * 2,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	newReq := w.newReq
	if w.forAgents != nil {
		newReq = w.forAgents(n)
	}
	if w.before != nil {
		if err := w.before(); err != nil {
			return result{errs: 1, firstErr: "before the cell: " + err.Error()}
		}
	}
	if w.after != nil {
		defer func() { _ = w.after() }()
	}
	var seq atomic.Int64
	start := time.Now()
	measureFrom := start.Add(warmup)
	var m0 chan meterSample
	if w.meter != nil {
		m0 = make(chan meterSample, 1)
		t := time.AfterFunc(warmup, func() { m0 <- w.meter() })
		defer t.Stop()
	}
	end := measureFrom.Add(d)
	lat := make([][]time.Duration, n)
	errs := make([]int, n)
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for k := range n {
		wg.Go(func() {
			mine := make([]time.Duration, 0, 4096)
			for ctx.Err() == nil {
				req, err := newReq(int(seq.Add(1)))
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					errs[k]++
					break
				}
				t0 := time.Now()
				if t0.After(end) {
					break
				}
				status, body, err := do(client, req)
				t1 := time.Now()
				if t0.Before(measureFrom) {
					continue
				}
				if err != nil || status != w.want || (w.check != nil && !w.check(body)) {
					errs[k]++
					if err != nil {
						firstErr.CompareAndSwap(nil, err.Error())
					} else {
						firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d: %s", status, strings.TrimSpace(body)))
					}
					continue
				}
				mine = append(mine, t1.Sub(t0))
			}
			lat[k] = mine
		})
	}
	wg.Wait()
	elapsed := time.Since(measureFrom)
	var all []time.Duration
	r := result{elapsed: elapsed}
	if m0 != nil {
		select {
		case before := <-m0:
			r.use = w.meter().sub(before)
		default: // cancelled during the warm-up
		}
	}
	for k := range n {
		all = append(all, lat[k]...)
		r.errs += errs[k]
	}
	r.firstErr, _ = firstErr.Load().(string)
	slices.Sort(all)
	r.ops = len(all)
	r.requests = r.ops + r.errs
	r.throughput = float64(len(all)) / elapsed.Seconds()
	r.p50, r.p99, r.p999 = quantile(all, 0.50), quantile(all, 0.99), quantile(all, 0.999)
	return r
}

// quantile of a sorted slice, nearest rank.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// do sends req and reads the whole answer; the body comes back only for
// error messages (first 200 bytes).
func do(c *http.Client, req *http.Request) (int, string, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", err
	}
	if len(b) > 200 {
		b = b[:200]
	}
	return resp.StatusCode, string(b), nil
}
