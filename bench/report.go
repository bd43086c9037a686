package main

import (
	"fmt"
	"io"
	"math"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/valet-dev/valet/broker"
)

func declaration(ttl time.Duration) broker.Declaration {
	return broker.Declaration{Template: "triage", Intent: "triage ticket 4521", Tools: []string{"tickets.read", "kb.search"}, TTL: ttl}
}

// report gathers every measurement of one bench run.
type report struct {
	opts         options
	vaultBin     string
	vaultMissing string
	proxyMissing string                      // bench/proxy.go
	cells        map[string]map[int][]result // workload → concurrency → one result per run
	order        []string
	parts        []part
	partRuns     [][]partResult // run → part
	trips        tripCount
	bulk         []epochResult
	verifier     verifierResult
	memory       memoryReport
	memoryErr    error
	redisRSS     int64
	vaultRSS     int64
}

func (r *report) add(name string, conc int, res result) {
	if r.cells[name] == nil {
		r.cells[name] = map[int][]result{}
		r.order = append(r.order, name)
	}
	r.cells[name][conc] = append(r.cells[name][conc], res)
}

// med is the median of f over the runs of one cell.
func (r *report) med(name string, conc int, f func(result) float64) (float64, bool) {
	rs := r.cells[name][conc]
	if len(rs) == 0 {
		return 0, false
	}
	xs := make([]float64, len(rs))
	for i, x := range rs {
		xs[i] = f(x)
	}
	return median(xs), true
}

// ratio is the median over runs of f(a's result) ÷ f(b's result) in the same
// run: noise that hits a whole run cancels out.
func (r *report) ratio(a, b string, conc int, f func(result) float64, invert bool) (float64, bool) {
	ra, rb := r.cells[a][conc], r.cells[b][conc]
	if len(ra) == 0 || len(ra) != len(rb) {
		return 0, false
	}
	xs := make([]float64, len(ra))
	for i := range ra {
		num, den := f(ra[i]), f(rb[i])
		if invert {
			num, den = den, num
		}
		if den == 0 {
			return 0, false
		}
		xs[i] = num / den
	}
	return median(xs), true
}

func throughput(x result) float64 { return x.throughput }
func p99(x result) float64        { return float64(x.p99) }

// ceiling returns the ceiling in ops/s of every run.
func (r *report) ceilings() []float64 {
	var out []float64
	for _, run := range r.partRuns {
		sum := 0.0
		for i, p := range r.parts {
			if p.inSum {
				sum += run[i].nsPerOp
			}
		}
		out = append(out, 1e9/sum)
	}
	return out
}

// valetToCeiling is the median over runs of Valet declarations/s at conc
// divided by that run's ceiling.
func (r *report) valetToCeiling(conc int) (float64, bool) {
	rs := r.cells[wValetDeclare][conc]
	cs := r.ceilings()
	if len(rs) == 0 || len(rs) != len(cs) {
		return 0, false
	}
	xs := make([]float64, len(rs))
	for i := range rs {
		xs[i] = rs[i].throughput / cs[i]
	}
	return median(xs), true
}

func (r *report) print(out io.Writer) {
	o := r.opts
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	line := func(cells ...string) { fmt.Fprintln(w, strings.Join(cells, "\t")+"\t") }
	text := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }

	text("Valet bench, %s, %s/%s, GOMAXPROCS=%d, %s; %d run(s) of %s per cell (after %s warm-up), median of runs",
		time.Now().Format("2006-01-02 15:04"), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), runtime.Version(),
		o.runs, o.duration, o.warmup)
	if r.vaultMissing != "" {
		text("Vault columns missing: %s", r.vaultMissing)
	} else {
		text("Vault: %s (dev server: in-memory storage, no audit device)", r.vaultBin)
	}
	text("Valet: in-process, loopback HTTP, Redis ledger, RS256 identity in, EdDSA task token out, CEL template, audit file with fsync, JSON info log to a file")
	text("")
	line("workload", "agents", "ops/s", "p50", "p99", "p99.9", "errors")
	for _, name := range r.order {
		for _, c := range o.conc {
			rs := r.cells[name][c]
			if len(rs) == 0 {
				continue
			}
			tp, _ := r.med(name, c, throughput)
			p50, _ := r.med(name, c, func(x result) float64 { return float64(x.p50) })
			p99v, _ := r.med(name, c, p99)
			p999, _ := r.med(name, c, func(x result) float64 { return float64(x.p999) })
			errs, first := 0, ""
			for _, x := range rs {
				errs += x.errs
				if first == "" {
					first = x.firstErr
				}
			}
			errCell := fmt.Sprint(errs)
			if errs > 0 && first != "" {
				errCell += " (" + truncate(first, 60) + ")"
			}
			line(name, fmt.Sprint(c), fmt.Sprintf("%.0f", tp), dur(p50), dur(p99v), dur(p999), errCell)
		}
	}

	text("")
	if r.vaultMissing == "" {
		line("ratio (median of per-run ratios)", "agents", "Valet÷Vault ops/s", "Vault p99÷Valet p99", "", "", "")
		for _, vw := range []string{wVaultLogin, wVaultService, wVaultBatch} {
			for _, c := range o.conc {
				tr, ok1 := r.ratio(wValetDeclare, vw, c, throughput, false)
				pr, ok2 := r.ratio(wValetDeclare, vw, c, p99, true)
				if ok1 && ok2 {
					line("Valet declare vs "+vw, fmt.Sprint(c), fmt.Sprintf("%.2f×", tr), fmt.Sprintf("%.2f×", pr), "", "", "")
				}
			}
		}
	} else {
		text("Valet÷Vault ratios: missing, no Vault (see above)")
	}

	text("")
	r.printProxy(line, text)
	text("")
	line("ceiling part (b.RunParallel)", "", "ns/op", "CPU µs/op", "allocs/op", "in ceiling", "")
	for i, p := range r.parts {
		var ns []float64
		var allocs int64
		failed := false
		for _, run := range r.partRuns {
			ns = append(ns, run[i].nsPerOp)
			allocs = run[i].allocs
			failed = failed || run[i].failed
		}
		m := median(ns)
		in := map[bool]string{true: "yes", false: "no"}[p.inSum]
		if failed {
			in += " (FAILED)"
		}
		line(p.name, "", fmt.Sprintf("%.0f", m), fmt.Sprintf("%.1f", m*float64(runtime.GOMAXPROCS(0))/1000), fmt.Sprint(allocs), in, "")
	}
	cs := r.ceilings()
	text("ceiling = 1 / Σ ns/op (parallel) = GOMAXPROCS / Σ CPU cost per op = %.0f declarations/s", median(cs))
	for _, c := range o.conc {
		if x, ok := r.valetToCeiling(c); ok {
			text("Valet declare at %d agents ÷ ceiling = %.2f", c, x)
		}
	}

	text("")
	line("other measurements", "", "value", "", "", "", "")
	tc := r.trips
	line("Redis round trips per declaration (go-redis hook)", "", fmt.Sprintf("%.2f", tc.declTrips), "", "", "", "")
	line("Redis commands per declaration, incl. in-script (commandstats)", "", fmt.Sprintf("%.2f", tc.declCalls), "", "", "", "")
	line("Redis round trips per introspection (hook)", "", fmt.Sprintf("%.2f", tc.introTrips), "", "", "", "")
	line("Redis commands per introspection (commandstats)", "", fmt.Sprintf("%.2f", tc.introCalls), "", "", "", "")
	if tc.bad > 0 {
		line("  unexpected answers while counting", "", fmt.Sprint(tc.bad), "", "", "", "")
	}
	if vr := r.verifier; vr.err != nil {
		line("verifier checks/s (feed live, warm)", "", "error: "+truncate(vr.err.Error(), 80), "", "", "", "")
	} else if vr.checks > 0 {
		line(fmt.Sprintf("verifier checks/s (feed live, warm, %d goroutines)", runtime.GOMAXPROCS(0)), "",
			fmt.Sprintf("%.0f/s", float64(vr.checks)/vr.elapsed.Seconds()), fmt.Sprintf("%.2f µs/check", float64(vr.elapsed.Microseconds())*float64(runtime.GOMAXPROCS(0))/float64(vr.checks)), "", "", "")
		line("  HTTP calls to Valet per warm check", "", fmt.Sprintf("%.4f", float64(vr.httpCalls)/float64(vr.checks)),
			fmt.Sprintf("%d calls in %d checks", vr.httpCalls, vr.checks), "", "", "")
		line("  Valet's Redis round trips per warm check", "", fmt.Sprintf("%.4f", float64(vr.redisTrips)/float64(vr.checks)),
			fmt.Sprintf("%d trips in the window, all background (reaper, feed)", vr.redisTrips), "", "", "")
	}
	for _, b := range r.bulk {
		if b.err != nil {
			line(fmt.Sprintf("bulk revoke of one agent, %s credentials", thousands(b.n)), "", "error: "+truncate(b.err.Error(), 80), "", "", "", "")
			continue
		}
		line(fmt.Sprintf("bulk revoke of one agent, %s credentials: Admin.Revoke answered", thousands(b.n)), "", dur(float64(b.answered)), "epoch set", "", "", "")
		line(fmt.Sprintf("  %s sampled tokens introspected inactive", thousands(b.sample)), "", dur(float64(b.inactive)), fmt.Sprintf("since the call; %d pass(es) of 1,000 introspections", b.passes), "", "", "")
		line("  the job ended every task, one by one", "", dur(float64(b.jobDone)), fmt.Sprintf("%.0f/s", float64(b.n)/b.jobDone.Seconds()), "", "", "")
		line("  seeding them through ledger Record", "", dur(float64(b.seed)), fmt.Sprintf("%.0f/s", float64(b.n)/b.seed.Seconds()), "", "", "")
	}
	if b, ok := r.largestBulk(); ok {
		line(fmt.Sprintf("Redis bytes per live task (used_memory Δ / %s)", thousands(b.n)), "", fmt.Sprintf("%.0f B", b.bytesPerTask), "", "", "", "")
	}
	if r.memoryErr != nil {
		line("broker RSS with live tasks", "", "error: "+truncate(r.memoryErr.Error(), 80), "", "", "", "")
	} else if m := r.memory; m.Tasks > 0 {
		perTask := float64(m.RSSAfter-m.RSSBefore) / float64(m.Tasks)
		line(fmt.Sprintf("broker RSS, %s live tasks, memory ledger", thousands(m.Tasks)), "", mb(m.RSSAfter),
			fmt.Sprintf("%s empty, %.0f B/task RSS, %.0f B/task heap", mb(m.RSSBefore), perTask,
				float64(m.HeapAfter-m.HeapBefore)/float64(m.Tasks)), "", "", "")
		if m.Tasks != 100000 {
			line("  projected for 100,000 live tasks", "", mb(m.RSSBefore+int64(perTask*100000)), "", "", "", "")
		}
	}
	line("broker RSS with the Redis ledger", "", "holds no task", "", "", "", "")
	if r.redisRSS > 0 {
		line("redis-server RSS at the end", "", mb(r.redisRSS), "", "", "", "")
	}
	if r.vaultRSS > 0 {
		line("vault RSS at the end", "", mb(r.vaultRSS), "", "", "", "")
	}

	text("")
	line("target", "", "measured", "holds", "", "", "")
	verdict := func(ok bool) string { return map[bool]string{true: "yes", false: "NO"}[ok] }
	if x, ok := r.valetToCeiling(32); ok {
		line("Valet declarations/s ÷ ceiling at 32 ≥ 0.5", "", fmt.Sprintf("%.2f", x), verdict(x >= 0.5), "", "", "")
	} else {
		line("Valet declarations/s ÷ ceiling at 32 ≥ 0.5", "", "not measured (no 32 in -concurrency)", "", "", "", "")
	}
	if r.vaultMissing != "" {
		line("Valet ÷ Vault jwt login ops/s ≥ 4×, p99 ≥ 5×", "", "missing: no Vault", "", "", "", "")
	} else {
		for _, c := range o.conc {
			tr, ok1 := r.ratio(wValetDeclare, wVaultLogin, c, throughput, false)
			pr, ok2 := r.ratio(wValetDeclare, wVaultLogin, c, p99, true)
			if ok1 && ok2 {
				line(fmt.Sprintf("Valet ÷ Vault jwt login ops/s ≥ 4× at %d", c), "", fmt.Sprintf("%.2f×", tr), verdict(tr >= 4), "", "", "")
				line(fmt.Sprintf("Vault p99 ÷ Valet p99 ≥ 5× at %d", c), "", fmt.Sprintf("%.2f×", pr), verdict(pr >= 5), "", "", "")
			}
		}
	}
	line("Redis round trips per declaration = 1", "", fmt.Sprintf("%.2f", tc.declTrips), verdict(math.Abs(tc.declTrips-1) < 0.01), "", "", "")
	if vr := r.verifier; vr.err == nil && vr.checks > 0 {
		line("round trips per warm revocation check = 0", "", fmt.Sprintf("%d HTTP", vr.httpCalls), verdict(vr.httpCalls == 0), "", "", "")
	}
	for _, b := range r.bulk {
		if b.err != nil {
			continue
		}
		line(fmt.Sprintf("bulk revoke of one agent < 100 ms (epoch), %s", thousands(b.n)), "", dur(float64(b.answered)),
			verdict(b.answered < 100*time.Millisecond), "", "", "")
		if b.n == 100000 {
			line("100,000 individual credentials revoked < 10 s", "", dur(float64(b.jobDone)), verdict(b.jobDone < 10*time.Second), "", "", "")
		}
	}
	if m := r.memory; r.memoryErr == nil && m.Tasks == 100000 {
		line("broker with 100,000 live tasks < 200 MB RSS", "", mb(m.RSSAfter), verdict(m.RSSAfter < 200<<20), "", "", "")
	}
	w.Flush()
}

func (r *report) largestBulk() (epochResult, bool) {
	var best epochResult
	for _, b := range r.bulk {
		if b.err == nil && b.n > best.n {
			best = b
		}
	}
	return best, best.n > 0
}

func dur(ns float64) string {
	d := time.Duration(ns)
	switch {
	case d == 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", ns/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.2fms", ns/1e6)
	default:
		return fmt.Sprintf("%.2fs", ns/1e9)
	}
}

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

func thousands(n int) string {
	s := fmt.Sprint(n)
	var parts []string
	for len(s) > 3 {
		parts = append([]string{s[len(s)-3:]}, parts...)
		s = s[:len(s)-3]
	}
	return strings.Join(append([]string{s}, parts...), ",")
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
