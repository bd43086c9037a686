package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

// parallel calls fn(i) for i in [0, n) on workers goroutines and returns
// the first error.
func parallel(n, workers int, fn func(i int) error) error {
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || firstErr.Load() != nil {
					return
				}
				if err := fn(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	err, _ := firstErr.Load().(error)
	return err
}

// redisInfo reads one numeric field of INFO section.
func redisInfo(ctx context.Context, c *redis.Client, section, field string) (int64, error) {
	s, err := c.Info(ctx, section).Result()
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(s, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("INFO %s has no %s", section, field)
}

// redisCalls sums the calls of every command in INFO commandstats.
func redisCalls(ctx context.Context, c *redis.Client) (int64, error) {
	s, err := c.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, err
	}
	var total int64
	for line := range strings.SplitSeq(s, "\r\n") {
		_, rest, ok := strings.Cut(line, ":calls=")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			return 0, err
		}
		total += v
	}
	return total, nil
}

// memoryReport is what the memory child prints.
type memoryReport struct {
	Tasks       int   `json:"tasks"`
	RSSBefore   int64 `json:"rss_before"`
	RSSAfter    int64 `json:"rss_after"`
	HeapBefore  int64 `json:"heap_before"`
	HeapAfter   int64 `json:"heap_after"`
	DeclareNano int64 `json:"declare_ns"`
}

// memoryChild is a broker with the in-memory ledger (as `valet dev` runs)
// that declares n tasks through Service.Declare and reports its RSS. It
// runs in a process of its own, so nothing else counts.
func memoryChild(n int, out io.Writer) error {
	ctx := context.Background()
	p, err := startIdP()
	if err != nil {
		return err
	}
	defer p.stop()
	agents := 500
	idTokens, err := p.tokens(agents, runtime.GOMAXPROCS(0))
	if err != nil {
		return err
	}
	key, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		return err
	}
	self := "http://127.0.0.1:1"
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: self, Keys: []issuers.SigningKey{{Private: key}}}, time.Now)
	if err != nil {
		return err
	}
	verifier, err := identity.New(ctx, []identity.IssuerConfig{{Name: "bench", IssuerURL: p.url, Audiences: []string{audience},
		StaticJWKS: p.jwks}}, identity.Options{SelfIssuer: self})
	if err != nil {
		return err
	}
	templates, err := policy.Load([]policy.File{{Name: "bench.yaml", Data: []byte(benchTemplates)}}, []string{"bench"})
	if err != nil {
		return err
	}
	srv, err := server.New(ctx, server.Options{PublicURL: self, Identity: verifier, Tokens: tokens,
		Ledger: revocation.NewMemoryLedger(time.Now, 0), Auditors: []broker.Auditor{discardAuditor{}}, Templates: templates})
	if err != nil {
		return err
	}
	svc := srv.Service()
	d := broker.Declaration{Template: "triage", Intent: "triage ticket 4521", Tools: []string{"tickets.read", "kb.search"}, TTL: 10 * time.Minute}
	rep := memoryReport{Tasks: n}
	runtime.GC()
	debug.FreeOSMemory()
	rep.RSSBefore, _ = rssBytes(os.Getpid())
	rep.HeapBefore = heapInUse()
	t0 := time.Now()
	err = parallel(n, runtime.GOMAXPROCS(0)*2, func(i int) error {
		_, _, err := svc.Declare(ctx, idTokens[i%agents], d)
		return err
	})
	rep.DeclareNano = time.Since(t0).Nanoseconds()
	if err != nil {
		return err
	}
	runtime.GC()
	debug.FreeOSMemory()
	rep.RSSAfter, _ = rssBytes(os.Getpid())
	rep.HeapAfter = heapInUse()
	runtime.KeepAlive(svc) // the ledger is what is being measured
	return json.NewEncoder(out).Encode(rep)
}

func heapInUse() int64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

type discardAuditor struct{}

func (discardAuditor) Record(context.Context, broker.Event) error { return nil }

// measureMemory runs the memory child and reads its report.
func measureMemory(ctx context.Context, n int) (memoryReport, error) {
	exe, err := os.Executable()
	if err != nil {
		return memoryReport{}, err
	}
	cmd := exec.CommandContext(ctx, exe, "-memory-child", strconv.Itoa(n))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return memoryReport{}, fmt.Errorf("memory child: %w: %s", err, stderr.String())
	}
	var rep memoryReport
	if err := json.Unmarshal(b, &rep); err != nil {
		return memoryReport{}, fmt.Errorf("memory child answered %q: %w", b, err)
	}
	return rep, nil
}
