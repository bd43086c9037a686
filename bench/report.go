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
	profileTop   string // pprof's top of Valet's declare at 32, when a throughput target is missed
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

// ceilings returns the ceiling in ops/s of every run: GOMAXPROCS ÷ the
// CPU per op of the parts.
func (r *report) ceilings() []float64 {
	var out []float64
	for _, cpu := range r.ceilingCPU() {
		out = append(out, float64(runtime.GOMAXPROCS(0))*1e9/cpu)
	}
	return out
}

// ceilingCPU returns, for every run, the ceiling's CPU per declaration
// in ns: Σ CPU per op of the parts in it.
func (r *report) ceilingCPU() []float64 {
	var out []float64
	for _, run := range r.partRuns {
		sum := 0.0
		for i, p := range r.parts {
			if p.inSum {
				sum += run[i].cpuPerOp
			}
		}
		out = append(out, sum)
	}
	return out
}

// cpuPerRequest is the median over runs of a cell's CPU per request in ns:
// this process's (broker and load generator), redis-server's and Vault's.
func (r *report) cpuPerRequest(name string, conc int) (self, redis, vault float64, ok bool) {
	var ss, rs, vs []float64
	for _, x := range r.cells[name][conc] {
		if !x.use.ok || x.requests == 0 {
			continue
		}
		ss = append(ss, float64(x.use.self)/float64(x.requests))
		rs = append(rs, float64(x.use.redis)/float64(x.requests))
		vs = append(vs, float64(x.use.vault)/float64(x.requests))
	}
	if len(ss) == 0 {
		return 0, 0, 0, false
	}
	return median(ss), median(rs), median(vs), true
}

// cpuRatio is the median over runs of b's CPU per request (all processes)
// ÷ a's, in the same run.
func (r *report) cpuRatio(a, b string, conc int) (float64, bool) {
	ra, rb := r.cells[a][conc], r.cells[b][conc]
	if len(ra) == 0 || len(ra) != len(rb) {
		return 0, false
	}
	var xs []float64
	for i := range ra {
		ua, ub := ra[i].use, rb[i].use
		if !ua.ok || !ub.ok || ra[i].requests == 0 || rb[i].requests == 0 {
			continue
		}
		ca := float64(ua.self+ua.redis+ua.vault) / float64(ra[i].requests)
		cb := float64(ub.self+ub.redis+ub.vault) / float64(rb[i].requests)
		if ca > 0 {
			xs = append(xs, cb/ca)
		}
	}
	if len(xs) == 0 {
		return 0, false
	}
	return median(xs), true
}

// hitRatio is the identity cache's hits ÷ lookups over every run of a cell.
func (r *report) hitRatio(name string, conc int) (float64, bool) {
	var hits, lookups uint64
	for _, x := range r.cells[name][conc] {
		if x.use.ok {
			hits += x.use.hits
			lookups += x.use.hits + x.use.misses
		}
	}
	if lookups == 0 {
		return 0, false
	}
	return float64(hits) / float64(lookups), true
}

// declareTargets are the throughput targets, Valet declare ÷
// Vault auth/jwt/login: 2× at 1 agent, 4× at 8 and more.
func declareTarget(conc int) float64 {
	if conc == 1 {
		return 2
	}
	return 4
}

// ceilingTarget is the Valet ÷ ceiling target at 32 agents.
const ceilingTarget = 0.6

// throughputMissed says whether a throughput target was measured and
// missed, so the report explains it with a profile.
func (r *report) throughputMissed() bool {
	if x, ok := r.valetToCeiling(32); ok && x < ceilingTarget {
		return true
	}
	for _, c := range r.opts.conc {
		if tr, ok := r.ratio(wValetDeclare, wVaultLogin, c, throughput, false); ok && tr < declareTarget(c) {
			return true
		}
	}
	return false
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
		text("Vault: %s (dev server: in-memory storage; no audit device, and a second column with a file audit device, enabled for that cell only)", r.vaultBin)
	}
	text("Valet: in-process, loopback HTTP, built as valet serve builds it: Redis ledger, RS256 identity in, EdDSA task token out, CEL template,")
	text("       audit file (audit.sync grant: fsync before answering; one cell with audit.sync interval %s) and its copy to the Redis audit stream, JSON info log to a file", auditInterval)
	text("Identity cache purged before every declare cell; distinct-token cells present each token once (%d tokens, more than a cell sends)", o.idTokens)
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
		line("ratio (median of per-run ratios)", "agents", "Valet÷Vault ops/s", "Vault p99÷Valet p99", "Vault CPU÷Valet CPU per request", "", "")
		pairs := [][2]string{
			{wValetDeclare, wVaultLogin}, {wValetDeclare, wVaultLoginAud}, {wValetDeclare, wVaultService}, {wValetDeclare, wVaultBatch},
			{wValetReused, wVaultLogin}, {wValetReused, wVaultLoginAud},
			{wValetInterval, wVaultLogin}, {wValetInterval, wVaultLoginAud},
		}
		for _, pair := range pairs {
			for _, c := range o.conc {
				tr, ok1 := r.ratio(pair[0], pair[1], c, throughput, false)
				pr, ok2 := r.ratio(pair[0], pair[1], c, p99, true)
				if ok1 && ok2 {
					cr := "-"
					if x, ok := r.cpuRatio(pair[0], pair[1], c); ok {
						cr = fmt.Sprintf("%.2f×", x)
					}
					line(shortName(pair[0])+" vs "+pair[1], fmt.Sprint(c), fmt.Sprintf("%.2f×", tr), fmt.Sprintf("%.2f×", pr), cr, "", "")
				}
			}
		}
	} else {
		text("Valet÷Vault ratios: missing, no Vault (see above)")
	}

	text("")
	r.printProxy(line, text)
	text("")
	line("CPU per request (Δ over the measured window ÷ requests)", "agents", "identity cache hits", "bench process", "redis-server", "vault", "all")
	for _, name := range r.order {
		for _, c := range o.conc {
			self, red, vlt, okC := r.cpuPerRequest(name, c)
			if !okC {
				continue
			}
			hit := "-"
			if hr, ok := r.hitRatio(name, c); ok {
				hit = fmt.Sprintf("%.1f%%", 100*hr)
			}
			line(shortName(name), fmt.Sprint(c), hit, fmt.Sprintf("%.0f µs", self/1e3), fmt.Sprintf("%.0f µs", red/1e3), fmt.Sprintf("%.0f µs", vlt/1e3),
				fmt.Sprintf("%.0f µs", (self+red+vlt)/1e3))
		}
	}
	text("(bench process = the load generator, plus the broker for Valet's cells; vault = the Vault server's CPU, for its cells)")

	text("")
	line("ceiling part (b.RunParallel)", "", "ns/op (wall)", "CPU µs/op", "allocs/op", "in ceiling", "")
	for i, p := range r.parts {
		var ns, cpu, red []float64
		var allocs int64
		failed := false
		for _, run := range r.partRuns {
			ns = append(ns, run[i].nsPerOp)
			cpu = append(cpu, run[i].cpuPerOp)
			red = append(red, run[i].redisNs)
			allocs = run[i].allocs
			failed = failed || run[i].failed
		}
		in := map[bool]string{true: "yes", false: "no"}[p.inSum]
		if failed {
			in += " (FAILED)"
		}
		cpuCell := fmt.Sprintf("%.1f", median(cpu)/1e3)
		if p.redisCPU {
			cpuCell += fmt.Sprintf(" (redis-server %.1f)", median(red)/1e3)
		}
		line(p.name, "", fmt.Sprintf("%.0f", median(ns)), cpuCell, fmt.Sprint(allocs), in, "")
	}
	cs := r.ceilings()
	ceilCPU := median(r.ceilingCPU())
	text("ceiling CPU per declaration = Σ CPU µs/op (in ceiling) = %.1f µs; ceiling = GOMAXPROCS / that = %.0f declarations/s", ceilCPU/1e3, median(cs))
	for _, c := range o.conc {
		x, ok := r.valetToCeiling(c)
		if !ok {
			continue
		}
		self, red, _, okC := r.cpuPerRequest(wValetDeclare, c)
		if okC {
			text("Valet declare at %d agents: %.2f of the ceiling's throughput; CPU per declaration %.1f µs (bench process %.1f, redis-server %.1f), ceiling's share of it %.2f",
				c, x, (self+red)/1e3, self/1e3, red/1e3, ceilCPU/(self+red))
		} else {
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
		line("  the job ended every task (EndMany batches)", "", dur(float64(b.jobDone)), fmt.Sprintf("%.0f/s", float64(b.n)/b.jobDone.Seconds()), "", "", "")
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
	line("target (issue 14; Valet declare = distinct tokens, audit.sync grant)", "", "measured", "", "", "", "")
	verdict := func(ok bool) string { return map[bool]string{true: "met", false: "not met"}[ok] }
	if r.vaultMissing != "" {
		line("Valet declare ÷ Vault jwt login ops/s, Vault p99 ÷ Valet p99", "", "not measured: no Vault", "", "", "", "")
	} else {
		for _, c := range o.conc {
			if tr, ok := r.ratio(wValetDeclare, wVaultLogin, c, throughput, false); ok {
				line(fmt.Sprintf("Valet declare ÷ Vault jwt login ops/s ≥ %.0f× at %d", declareTarget(c), c), "", fmt.Sprintf("%.2f×", tr), verdict(tr >= declareTarget(c)), "", "", "")
			}
		}
		for _, c := range o.conc {
			if pr, ok := r.ratio(wValetDeclare, wVaultLogin, c, p99, true); ok {
				line(fmt.Sprintf("Vault p99 ÷ Valet p99 ≥ 5× at %d", c), "", fmt.Sprintf("%.2f×", pr), verdict(pr >= 5), "", "", "")
			}
		}
	}
	if x, ok := r.valetToCeiling(32); ok {
		measured := fmt.Sprintf("%.2f", x)
		if self, red, _, ok := r.cpuPerRequest(wValetDeclare, 32); ok && self+red > 0 {
			measured += fmt.Sprintf(" (CPU: ceiling's share of Valet's %.2f)", median(r.ceilingCPU())/(self+red))
		}
		line(fmt.Sprintf("Valet ÷ ceiling ≥ %.1f at 32 (declarations/s)", ceilingTarget), "", measured, verdict(x >= ceilingTarget), "", "", "")
	} else {
		line(fmt.Sprintf("Valet ÷ ceiling ≥ %.1f at 32", ceilingTarget), "", "not measured (no 32 in -concurrency)", "", "", "", "")
	}
	line("Redis commands per declaration ≤ 8 (commandstats, incl. in-script)", "", fmt.Sprintf("%.2f", tc.declCalls), verdict(tc.declCalls <= 8), "", "", "")
	line("Redis round trips per declaration in serve's wiring = 1", "", fmt.Sprintf("%.2f", tc.declTrips), verdict(math.Abs(tc.declTrips-1) < 0.01), "", "", "")
	hundredK := false
	for _, b := range r.bulk {
		if b.err == nil && b.n == 100000 {
			line("100,000 individual bulk ends < 10 s", "", dur(float64(b.jobDone)), verdict(b.jobDone < 10*time.Second), "", "", "")
			hundredK = true
		}
	}
	if !hundredK {
		note := "not measured (-bulk has no 100000)"
		if b, ok := r.largestBulk(); ok && b.jobDone > 0 {
			note += fmt.Sprintf("; %s took %s, %.0f/s", thousands(b.n), dur(float64(b.jobDone)), float64(b.n)/b.jobDone.Seconds())
		}
		line("100,000 individual bulk ends < 10 s", "", note, "", "", "", "")
	}
	text("")
	line("other checks", "", "measured", "holds", "", "", "")
	if vr := r.verifier; vr.err == nil && vr.checks > 0 {
		line("round trips per warm revocation check = 0", "", fmt.Sprintf("%d HTTP", vr.httpCalls), verdict(vr.httpCalls == 0), "", "", "")
	}
	for _, b := range r.bulk {
		if b.err != nil {
			continue
		}
		line(fmt.Sprintf("bulk revoke of one agent < 100 ms (epoch), %s", thousands(b.n)), "", dur(float64(b.answered)),
			verdict(b.answered < 100*time.Millisecond), "", "", "")
	}
	if m := r.memory; r.memoryErr == nil && m.Tasks == 100000 {
		line("broker with 100,000 live tasks < 200 MB RSS", "", mb(m.RSSAfter), verdict(m.RSSAfter < 200<<20), "", "", "")
	}
	w.Flush()
	if r.profileTop != "" {
		fmt.Fprintf(out, "\nA throughput target is not met. Where Valet's declare at 32 agents spends its CPU, from Service.DeclareWith down\n"+
			"(go tool pprof -top -cum -show_from; percentages of all of the bench process's samples, load generator included):\n%s", r.profileTop)
	}
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

// shortName is a declare cell's name without the route, for the ratio rows.
func shortName(name string) string {
	n, _, _ := strings.Cut(name, " (POST")
	return n
}
