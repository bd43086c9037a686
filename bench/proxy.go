package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/proxy"
)

// The proxy cells: the same GET to the same loopback upstream, once
// straight from the client with a task token, once through `valet proxy`
// with a handle (README "The proxy row").
const (
	wDirect  = "direct HTTP call (loopback upstream)"
	wProxied = "through valet proxy (same upstream)"
)

// proxyTemplate is the template the proxy's tasks use; UPSTREAM becomes
// the upstream's host:port. It is added to Valet's templates as a reload
// would add it.
const proxyTemplate = `
  - name: proxied
    principals:
      - issuer: bench
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 15m, max: 15m}
    tools: [orders.read]
    audiences: [valet-proxy]
    upstreams:
      - name: orders
        url: http://UPSTREAM/api
        allow_private: true
        credential: {from: task_token, as: header}
        routes:
          - {methods: [GET], path: "/orders/*", tool: orders.read}
`

const proxiedDeclaration = `{"template":"proxied","intent":"read order 4521","tools":["orders.read"],"ttl_seconds":900}`

// proxyBench is a loopback upstream and `valet proxy` in front of it,
// following the bench's Valet.
type proxyBench struct {
	v        *valet
	p        *idp
	upURL    string
	proxyURL string
	close    []func()
	// toValet counts the proxy's tool-call reports to Valet, so a cell
	// after the proxied one starts once they have drained.
	toValet *reportCounter
}

// reportCounter is the proxy's transport to Valet, counting the tool-call
// reports (POST /v1/tasks/{id}/events) in flight and when the last ended.
type reportCounter struct {
	inFlight atomic.Int64
	lastEnd  atomic.Int64 // unix ns
}

func (rc *reportCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPost || !strings.HasSuffix(req.URL.Path, "/events") {
		return http.DefaultTransport.RoundTrip(req)
	}
	rc.inFlight.Add(1)
	defer func() { rc.lastEnd.Store(time.Now().UnixNano()); rc.inFlight.Add(-1) }()
	return http.DefaultTransport.RoundTrip(req)
}

// settle waits, after the proxied cell, until the proxy's queue of
// tool-call reports has drained (no report for 200 ms; at most 30 s):
// Valet records each one, and that work belongs to the proxied cell, not
// to the cell that runs next.
func (pb *proxyBench) settle(cell string) {
	if pb == nil || cell != wProxied {
		return
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if pb.toValet.inFlight.Load() == 0 && time.Since(time.Unix(0, pb.toValet.lastEnd.Load())) > 200*time.Millisecond {
			return
		}
	}
}

// startProxyBench starts the upstream, adds the proxied template to
// Valet's templates, and starts the proxy (its audit file and log in dir).
func startProxyBench(ctx context.Context, v *valet, p *idp, dir string) (*proxyBench, error) {
	pb := &proxyBench{v: v, p: p, toValet: &reportCounter{}}
	ok := false
	defer func() {
		if !ok {
			pb.stop()
		}
	}()
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	// The upstream answers a small JSON document to a request that carries
	// a bearer JWT, and 401 to any other: both cells must send one.
	up := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || strings.Count(tok, ".") != 2 {
			http.Error(w, `{"error":"no task token"}`, http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"order":4521,"status":"open"}`)
	})}
	go func() { _ = up.Serve(upLn) }()
	pb.close = append(pb.close, func() { _ = up.Close() })
	pb.upURL = "http://" + upLn.Addr().String()

	set, err := policy.Load([]policy.File{{Name: "bench.yaml", Data: []byte(benchTemplates +
		strings.ReplaceAll(proxyTemplate, "UPSTREAM", upLn.Addr().String()))}}, []string{"bench"})
	if err != nil {
		return nil, fmt.Errorf("the proxied template: %w", err)
	}
	v.svc.SetTemplates(set)

	auditor, auditFile, err := audit.OpenFile(filepath.Join(dir, "proxy-audit.jsonl"))
	if err != nil {
		return nil, err
	}
	pb.close = append(pb.close, func() { auditFile.Close() })
	logFile, err := os.Create(filepath.Join(dir, "proxy.log"))
	if err != nil {
		return nil, err
	}
	pb.close = append(pb.close, func() { logFile.Close() })
	px, err := proxy.New(proxy.Config{
		Valet: v.url, ClientID: clientID, ClientSecret: clientSecret, Audience: "valet-proxy", Templates: set,
		Identity: func(context.Context) (string, error) { return p.token("agent-proxy", time.Now()) },
		Auditor:  auditor, Logger: slog.New(slog.NewJSONHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo})),
		HTTPClient: &http.Client{Timeout: 10 * time.Second, Transport: pb.toValet},
	})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- px.Serve(pctx, ln) }()
	pb.close = append(pb.close, func() { cancel(); <-done })
	pb.proxyURL = "http://" + ln.Addr().String()

	// The proxy refuses calls until it follows Valet's revocation feed.
	for start := time.Now(); ; {
		status, body, err := do(http.DefaultClient, mustRequest(http.MethodGet, pb.proxyURL+"/healthz", ""))
		if err == nil && status == http.StatusOK && strings.Contains(body, `"feed_live":true`) {
			break
		}
		if time.Since(start) > 10*time.Second {
			return nil, fmt.Errorf("the proxy's revocation feed is not live after 10s: %d %s %v", status, body, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ok = true
	return pb, nil
}

// stop stops the proxy and the upstream; a second call does nothing.
func (pb *proxyBench) stop() {
	if pb == nil {
		return
	}
	for i := len(pb.close) - 1; i >= 0; i-- {
		pb.close[i]()
	}
	pb.close = nil
}

// workloads are the two proxy cells of one run, on a fresh task each run
// (a task lives 15 minutes at most): the direct call carries a task token
// of the proxied template, the proxied one the handle of a task declared
// through the proxy.
func (pb *proxyBench) workloads(ctx context.Context) ([]workload, error) {
	idTok, err := pb.p.token("agent-direct", time.Now())
	if err != nil {
		return nil, err
	}
	_, minted, err := pb.v.svc.Declare(ctx, idTok, broker.Declaration{Template: "proxied", Intent: "read order 4521",
		Tools: []string{"orders.read"}, TTL: 15 * time.Minute})
	if err != nil {
		return nil, fmt.Errorf("declaring the direct call's task: %w", err)
	}
	taskToken, _ := minted[0].Material["access_token"].(string)
	if taskToken == "" {
		return nil, errors.New("no task token for the direct call")
	}
	handle, err := pb.declare()
	if err != nil {
		return nil, err
	}
	get := func(url, bearer string) func(int) (*http.Request, error) {
		return func(int) (*http.Request, error) {
			req, err := http.NewRequest(http.MethodGet, url, nil)
			if err == nil {
				req.Header.Set("Authorization", "Bearer "+bearer)
			}
			return req, err
		}
	}
	isOrder := func(body string) bool { return strings.Contains(body, `"order":4521`) }
	return []workload{
		{name: wDirect, want: http.StatusOK, check: isOrder, newReq: get(pb.upURL+"/api/orders/4521", taskToken)},
		{name: wProxied, want: http.StatusOK, check: isOrder, newReq: get(pb.proxyURL+"/u/orders/orders/4521", handle)},
	}, nil
}

// declare declares a task through the proxy and returns its handle.
func (pb *proxyBench) declare() (string, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(mustRequest(http.MethodPost, pb.proxyURL+"/v1/tasks", proxiedDeclaration))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var d struct {
		Handle string `json:"handle"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&d); err != nil || resp.StatusCode != http.StatusCreated || d.Handle == "" {
		return "", fmt.Errorf("declaring through the proxy: %s %v", resp.Status, err)
	}
	return d.Handle, nil
}

func mustRequest(method, url, body string) *http.Request {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		panic(err) // the bench's own constant URLs
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	return req
}

// printProxy is the proxy's side-by-side table: per concurrency, the
// direct and proxied cells, the latency the proxy adds (median over runs
// of the per-run difference) and the throughput ratio.
func (r *report) printProxy(line func(...string), text func(string, ...any)) {
	if r.proxyMissing != "" {
		text("proxy cells missing: %s", r.proxyMissing)
		return
	}
	if len(r.cells[wProxied]) == 0 {
		return
	}
	line("valet proxy vs direct (same loopback upstream)", "agents", "direct ops/s", "proxied ops/s", "proxied÷direct ops/s",
		"direct p50", "proxied p50", "added p50", "direct p99", "proxied p99", "added p99")
	for _, c := range r.opts.conc {
		dr, pr := r.cells[wDirect][c], r.cells[wProxied][c]
		if len(dr) == 0 || len(dr) != len(pr) {
			continue
		}
		ratio, _ := r.ratio(wProxied, wDirect, c, throughput, false)
		dt, _ := r.med(wDirect, c, throughput)
		pt, _ := r.med(wProxied, c, throughput)
		d50, _ := r.med(wDirect, c, func(x result) float64 { return float64(x.p50) })
		p50, _ := r.med(wProxied, c, func(x result) float64 { return float64(x.p50) })
		d99, _ := r.med(wDirect, c, p99)
		p99v, _ := r.med(wProxied, c, p99)
		var add50, add99 []float64
		for i := range dr {
			add50 = append(add50, float64(pr[i].p50-dr[i].p50))
			add99 = append(add99, float64(pr[i].p99-dr[i].p99))
		}
		line("", fmt.Sprint(c), fmt.Sprintf("%.0f", dt), fmt.Sprintf("%.0f", pt), fmt.Sprintf("%.2f×", ratio),
			dur(d50), dur(p50), dur(median(add50)), dur(d99), dur(p99v), dur(median(add99)))
	}
}

// proxyCells starts the proxy cells' world, or says why they are missing.
// The returned *proxyBench may be nil; its methods allow that.
func proxyCells(ctx context.Context, v *valet, p *idp, dir string, progress func(string, ...any)) (*proxyBench, string) {
	progress("starting a loopback upstream and valet proxy in front of it...")
	pb, err := startProxyBench(ctx, v, p, dir)
	if err != nil {
		progress("valet proxy did not start: %v", err)
		return nil, "valet proxy did not start: " + err.Error()
	}
	return pb, ""
}

// addWorkloads appends the run's two proxy cells to ws (none without a
// proxy).
func (pb *proxyBench) addWorkloads(ctx context.Context, ws []workload) ([]workload, error) {
	if pb == nil {
		return ws, nil
	}
	pw, err := pb.workloads(ctx)
	if err != nil {
		return nil, fmt.Errorf("the proxy cells: %w", err)
	}
	return append(ws, pw...), nil
}
