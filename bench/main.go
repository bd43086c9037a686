// Command bench measures Valet end to end over HTTP against real Redis,
// side by side with a Vault dev server driven by the same load generator,
// and the ceiling no broker can beat, all in one run on one machine, and
// prints one table. See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := runMain(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	duration, warmup time.Duration
	runs             int
	conc             []int
	idTokens         int
	bulk             []int
	memoryTasks      int
	cpuprofile       string
	quick            bool
}

func parseOptions(args []string, stderr io.Writer) (options, int, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := options{}
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "measured time per cell")
	fs.DurationVar(&o.warmup, "warmup", 500*time.Millisecond, "unmeasured time before each cell")
	fs.IntVar(&o.runs, "runs", 3, "runs of every cell; the table shows the median")
	conc := fs.String("concurrency", "1,8,32,128", "concurrent clients, comma-separated")
	fs.IntVar(&o.idTokens, "tokens", 20000, "distinct identity tokens (one agent each) the clients cycle through; more than a cell sends, so none repeats in a cell")
	bulk := fs.String("bulk", "10000,100000", "bulk revocation sizes, comma-separated")
	fs.IntVar(&o.memoryTasks, "memory-tasks", 100000, "live tasks held by the broker whose RSS is measured")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of Valet declarations at concurrency 32 to this file (one is taken anyway, and summarised, when a throughput target is not met)")
	fs.BoolVar(&o.quick, "quick", false, "a short run: 1s cells, 1 run, concurrency 1 and 32, bulk 10,000, 6,000 tokens, 20,000 tasks for RSS")
	child := fs.Int("memory-child", 0, "internal: run the memory measurement child with this many tasks")
	if err := fs.Parse(args); err != nil {
		return o, 0, err
	}
	if o.quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["duration"] {
			o.duration = time.Second
		}
		if !set["runs"] {
			o.runs = 1
		}
		if !set["concurrency"] {
			*conc = "1,32"
		}
		if !set["bulk"] {
			*bulk = "10000"
		}
		if !set["tokens"] {
			o.idTokens = 6000
		}
		if !set["memory-tasks"] {
			o.memoryTasks = 20000
		}
	}
	var err error
	if o.conc, err = intList(*conc); err != nil {
		return o, 0, fmt.Errorf("-concurrency: %w", err)
	}
	if o.bulk, err = intList(*bulk); err != nil {
		return o, 0, fmt.Errorf("-bulk: %w", err)
	}
	if o.runs < 1 || o.duration <= 0 || o.idTokens < 1 {
		return o, 0, errors.New("-runs, -duration and -tokens must be positive")
	}
	return o, *child, nil
}

func intList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// workload names, in table order.
const (
	wValetDeclare    = "Valet declare, distinct tokens (POST /v1/tasks)"
	wVaultLogin      = "Vault auth/jwt/login"
	wVaultService    = "Vault token create, service"
	wVaultBatch      = "Vault token create, batch"
	wValetIntrospect = "Valet introspect"
)

func runMain(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	o, child, err := parseOptions(args, stderr)
	if err != nil {
		return err
	}
	if child > 0 {
		return memoryChild(child, stdout)
	}
	progress := func(format string, a ...any) { fmt.Fprintf(stderr, format+"\n", a...) }

	dir, err := os.MkdirTemp("", "valet-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	progress("starting redis-server, the OIDC issuer and Valet...")
	rs, err := startRedis(dir)
	if err != nil {
		return err
	}
	defer rs.stop()
	p, err := startIdP()
	if err != nil {
		return err
	}
	defer p.stop()
	v, err := startValet(ctx, p, rs.url(), dir)
	if err != nil {
		return fmt.Errorf("starting valet: %w", err)
	}
	defer v.stop()
	vi, err := startValetWith(ctx, p, rs.url(), dir, valetConfig{prefix: "valeti", syncInterval: auditInterval})
	if err != nil {
		return fmt.Errorf("starting valet with audit.sync interval: %w", err)
	}
	defer vi.stop()
	admin := redis.NewClient(&redis.Options{Addr: rs.addr})
	defer admin.Close()

	var vt *vault
	vaultBin := vaultBinary(getenv)
	vaultMissing := ""
	if vaultBin == "" {
		vaultMissing = "no Vault binary: set VALET_VAULT_BIN, or build one with `cd tools/vault && go build -ldflags \"-s -w\" -trimpath -o ../../.bin/vault .`"
		progress("%s", vaultMissing)
	} else {
		progress("starting the Vault dev server (%s)...", vaultBin)
		vt, err = startVault(ctx, vaultBin, p, dir)
		if err != nil {
			vaultMissing = "Vault did not start: " + err.Error()
			progress("%s", vaultMissing)
			vt = nil
		} else {
			defer vt.stop()
		}
	}

	pb, proxyMissing := proxyCells(ctx, v, p, dir, progress) // bench/proxy.go
	defer pb.stop()

	progress("minting %d RS256 identity tokens...", o.idTokens)
	idTokens, err := p.tokens(o.idTokens, runtime.GOMAXPROCS(0))
	if err != nil {
		return err
	}
	cf, err := newCeilingFixture(ctx, p, rs.url(), 256)
	if err != nil {
		return fmt.Errorf("preparing the ceiling: %w", err)
	}
	if cf.answer, err = declareAnswer(v, idTokens[0]); err != nil {
		return fmt.Errorf("sizing a declaration's answer: %w", err)
	}

	rep := &report{opts: o, vaultBin: vaultBin, vaultMissing: vaultMissing, proxyMissing: proxyMissing, cells: map[string]map[int][]result{}}
	for r := range o.runs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		taskTokens, err := declareMany(ctx, v, idTokens, 1024)
		if err != nil {
			return fmt.Errorf("declaring tasks to introspect: %w", err)
		}
		wls, err := pb.addWorkloads(ctx, benchCells(ctx, workloads(v, vt, idTokens, taskTokens), v, vi, vt, admin, idTokens, dir))
		if err != nil {
			return err
		}
		for _, c := range o.conc {
			for _, w := range wls {
				progress("run %d/%d: %s at %d...", r+1, o.runs, w.name, c)
				res := run(ctx, w, c, o.warmup, o.duration)
				rep.add(w.name, c, res)
				pb.settle(w.name)
			}
		}
		progress("run %d/%d: ceiling benchmarks...", r+1, o.runs)
		parts := cf.parts()
		pr := make([]partResult, len(parts))
		for i, pt := range parts {
			pr[i] = cf.measure(pt)
		}
		rep.parts = parts
		rep.partRuns = append(rep.partRuns, pr)
	}

	pb.stop() // the proxy's queued tool-call reports would count in the round trips below

	progress("counting Redis round trips per declaration and introspection...")
	rep.trips, err = countTrips(ctx, v, rs, idTokens)
	if err != nil {
		return err
	}
	progress("verifier checks with the revocation feed live...")
	taskTokens, err := declareMany(ctx, v, idTokens, 1024)
	if err != nil {
		return fmt.Errorf("declaring tasks to verify: %w", err)
	}
	rep.verifier = verifierChecks(ctx, v, taskTokens, o.duration)
	for _, n := range o.bulk {
		progress("bulk revocation of one agent holding %d credentials...", n)
		rep.bulk = append(rep.bulk, epochRevoke(ctx, p, rs.url(), dir, n))
	}
	if o.memoryTasks > 0 {
		progress("RSS of a broker holding %d live tasks (child process)...", o.memoryTasks)
		rep.memory, rep.memoryErr = measureMemory(ctx, o.memoryTasks)
	}
	if rss, err := rssBytes(rs.pid()); err == nil {
		rep.redisRSS = rss
	}
	if vt != nil {
		if rss, err := rssBytes(vt.pid()); err == nil {
			rep.vaultRSS = rss
		}
	}
	if o.cpuprofile != "" || rep.throughputMissed() {
		progress("profiling Valet declarations at concurrency 32 for %s...", o.duration)
		path := o.cpuprofile
		if path == "" {
			path = filepath.Join(dir, "declare.prof")
		}
		if err := profileDeclare(ctx, path, o, v, idTokens); err != nil {
			return err
		}
		if rep.throughputMissed() {
			rep.profileTop = pprofTop(ctx, path)
		}
	}
	rep.print(stdout)
	return nil
}

// workloads are the cells of one run. Vault's are left out when vt is nil.
func workloads(v *valet, vt *vault, idTokens, taskTokens []string) []workload {
	ws := []workload{{
		name: wValetDeclare, want: http.StatusCreated,
		newReq: func(i int) (*http.Request, error) {
			req, err := http.NewRequest(http.MethodPost, v.url+"/v1/tasks", strings.NewReader(declarationBody))
			if err != nil {
				return nil, err
			}
			req.Header.Set("Authorization", "Bearer "+idTokens[i%len(idTokens)])
			req.Header.Set("Content-Type", "application/json")
			return req, nil
		},
	}}
	if vt != nil {
		ws = append(ws, workload{
			name: wVaultLogin, want: http.StatusOK,
			newReq: func(i int) (*http.Request, error) {
				body := `{"role":"agent","jwt":"` + idTokens[i%len(idTokens)] + `"}`
				return http.NewRequest(http.MethodPost, vt.addr+"/v1/auth/jwt/login", strings.NewReader(body))
			},
		})
		for _, typ := range []string{"service", "batch"} {
			name := wVaultService
			if typ == "batch" {
				name = wVaultBatch
			}
			ws = append(ws, workload{
				name: name, want: http.StatusOK,
				newReq: func(i int) (*http.Request, error) {
					body := fmt.Sprintf(`{"type":%q,"ttl":"10m","policies":["default"],"meta":{"task_id":"tsk_%08d","agent":"agent-%06d","template":"triage"}}`,
						typ, i, i%len(idTokens))
					req, err := http.NewRequest(http.MethodPost, vt.addr+"/v1/auth/token/create", strings.NewReader(body))
					if err != nil {
						return nil, err
					}
					req.Header.Set("X-Vault-Token", vaultRootToken)
					return req, nil
				},
			})
		}
	}
	ws = append(ws, workload{
		name: wValetIntrospect, want: http.StatusOK,
		newReq: func(i int) (*http.Request, error) {
			form := url.Values{"token": {taskTokens[i%len(taskTokens)]}}.Encode()
			req, err := http.NewRequest(http.MethodPost, v.url+"/v1/introspect", strings.NewReader(form))
			if err != nil {
				return nil, err
			}
			req.SetBasicAuth(clientID, clientSecret)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return req, nil
		},
		check: func(body string) bool { return strings.Contains(body, `"active":true`) },
	})
	return ws
}

// declareMany declares n tasks in-process (15 minutes each) and returns
// their task tokens, for the introspection cells.
func declareMany(ctx context.Context, v *valet, idTokens []string, n int) ([]string, error) {
	out := make([]string, n)
	d := declaration(15 * time.Minute)
	err := parallel(n, 8, func(i int) error {
		_, minted, err := v.svc.Declare(ctx, idTokens[i%len(idTokens)], d)
		if err != nil {
			return err
		}
		tok, ok := minted[0].Material["access_token"].(string)
		if !ok {
			return errors.New("no access_token in the minted task token")
		}
		out[i] = tok
		return nil
	})
	return out, err
}

// tripCount is Redis round trips per operation, counted two ways: by the
// go-redis hook on Valet's client (a pipeline is one trip), and by Redis's
// own INFO commandstats (calls per operation; EVAL counts once).
type tripCount struct {
	declTrips, declCalls   float64
	introTrips, introCalls float64
	bad                    int64 // answers that were not the expected ones
}

// countTrips declares 1,000 tasks over HTTP, then introspects 1,000 tokens.
// The reaper keeps running (one call a second), which is noise next to
// 1,000 requests.
func countTrips(ctx context.Context, v *valet, rs *redisServer, idTokens []string) (tripCount, error) {
	const n = 1000
	var tc tripCount
	admin := redis.NewClient(&redis.Options{Addr: rs.addr})
	defer admin.Close()
	client := &http.Client{Timeout: 10 * time.Second}
	var bad atomic.Int64
	measure := func(w workload) (trips, calls float64, err error) {
		t0 := v.hook.trips.Load()
		k0, err := redisCalls(ctx, admin)
		if err != nil {
			return 0, 0, err
		}
		err = parallel(n, 8, func(i int) error {
			req, err := w.newReq(i)
			if err != nil {
				return err
			}
			status, body, err := do(client, req)
			if err != nil {
				return err
			}
			if status != w.want || (w.check != nil && !w.check(body)) {
				bad.Add(1)
			}
			return nil
		})
		if err != nil {
			return 0, 0, err
		}
		k1, err := redisCalls(ctx, admin)
		// The first INFO counts itself once in commandstats.
		return float64(v.hook.trips.Load()-t0) / n, float64(k1-k0-1) / n, err
	}
	var err error
	if tc.declTrips, tc.declCalls, err = measure(workloads(v, nil, idTokens, nil)[0]); err != nil {
		return tc, fmt.Errorf("counting declaration round trips: %w", err)
	}
	taskTokens, err := declareMany(ctx, v, idTokens, 256)
	if err != nil {
		return tc, err
	}
	iw := workloads(v, nil, idTokens, taskTokens)
	if tc.introTrips, tc.introCalls, err = measure(iw[len(iw)-1]); err != nil {
		return tc, fmt.Errorf("counting introspection round trips: %w", err)
	}
	tc.bad = bad.Load()
	return tc, nil
}

func profileDeclare(ctx context.Context, path string, o options, v *valet, idTokens []string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	res := run(ctx, declareCell(wValetDeclare, v, nil, idTokens), 32, o.warmup, o.duration)
	pprof.StopCPUProfile()
	fmt.Fprintf(os.Stderr, "profiled %d declarations (%.0f/s); read it with: go tool pprof -top %s\n", res.ops, res.throughput, path)
	return nil
}

// declareRoot is where the profile summary starts: the HTTP server and
// middleware frames above it say nothing about where a declaration goes.
const declareRoot = `broker\.\(\*Service\)\.DeclareWith`

// pprofTop is the top cumulative entries of a CPU profile under
// Service.DeclareWith, as `go tool pprof -top -cum -show_from` prints
// them, without the profile's file header.
func pprofTop(ctx context.Context, path string) string {
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-cum", "-nodecount=30", "-show_from="+declareRoot, path).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("(go tool pprof failed: %v; read %s with go tool pprof -top -cum)\n", err, path)
	}
	var keep []string
	for l := range strings.SplitSeq(string(out), "\n") {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Type:") || strings.HasPrefix(l, "Time:") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// declareAnswer is the size of one declaration's answer over HTTP, so the
// ceiling's HTTP part writes as many bytes.
func declareAnswer(v *valet, idToken string) (int, error) {
	req, err := declareRequest(v, idToken)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusCreated {
		return 0, fmt.Errorf("status %d: %s", resp.StatusCode, truncate(string(b), 200))
	}
	return len(b), nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
