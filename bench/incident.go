package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/verify"
)

// epochResult is one bulk revocation of everything of one agent through
// Admin.Revoke: the epoch, then the job that ends every task.
type epochResult struct {
	n            int
	seed         time.Duration
	answered     time.Duration // Admin.Revoke returned
	inactive     time.Duration // every sampled token introspected inactive
	jobDone      time.Duration // the job ended every task (and audited it)
	sample       int
	passes       int     // introspection passes over the sample until all were inactive
	bytesPerTask float64 // Redis used_memory growth per seeded task
	err          error
}

// epochSample is how many of the seeded credentials are real signed task
// tokens, introspected before and after the revocation.
const epochSample = 1000

// epochRevoke seeds n live tasks of one agent (one credential each) into a
// ledger of its own prefix, then revokes the agent as an incident
// responder would: Admin.Revoke with selector {agent, issuer}. The admin
// answers as soon as the epoch is set (no inline job budget), the job ends
// the tasks in the background, as `valet serve` runs it.
func epochRevoke(ctx context.Context, p *idp, redisURL, dir string, n int) epochResult {
	res := epochResult{n: n, sample: min(n, epochSample)}
	fail := func(what string, err error) epochResult {
		res.err = fmt.Errorf("%s: %w", what, err)
		return res
	}
	c, err := revocation.NewClient(redisURL)
	if err != nil {
		return fail("redis", err)
	}
	defer c.Close()
	prefix := fmt.Sprintf("bulk%d", time.Now().UnixNano())
	l, err := revocation.NewRedisLedger(c, revocation.RedisOptions{Prefix: prefix})
	if err != nil {
		return fail("ledger", err)
	}
	controls, err := revocation.NewControls(c, prefix, time.Second)
	if err != nil {
		return fail("controls", err)
	}
	trail, err := audit.NewRedisWriter(c, audit.RedisWriterOptions{Prefix: prefix})
	if err != nil {
		return fail("audit stream", err)
	}
	auditor, auditFile, err := audit.OpenFile(filepath.Join(dir, prefix+".audit.jsonl"))
	if err != nil {
		return fail("audit file", err)
	}
	defer auditFile.Close()
	key, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		return fail("key", err)
	}
	self := "http://127.0.0.1:1"
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: self, Keys: []issuers.SigningKey{{Private: key}}}, time.Now)
	if err != nil {
		return fail("tokens", err)
	}
	verifier, err := identity.New(ctx, []identity.IssuerConfig{{Name: "bench", IssuerURL: p.url, Audiences: []string{audience},
		StaticJWKS: p.jwks}}, identity.Options{SelfIssuer: self})
	if err != nil {
		return fail("identity", err)
	}
	templates, err := policy.Load([]policy.File{{Name: "bench.yaml", Data: []byte(benchTemplates)}}, []string{"bench"})
	if err != nil {
		return fail("templates", err)
	}
	srv, err := server.New(ctx, server.Options{PublicURL: self, Identity: verifier, Tokens: tokens, Ledger: l, Epochs: l, Loss: l,
		Controls: controls, Auditors: []broker.Auditor{auditor}, Templates: templates, Agent: broker.AgentConfig{Limiter: l}, Records: l,
		Admin: &server.AdminOptions{Identity: verifier, Jobs: l, Timeline: trail, AgentIssuers: []string{"bench"}, InlineBudget: time.Nanosecond}})
	if err != nil {
		return fail("server", err)
	}
	svc, admin := srv.Service(), srv.Admin()

	runtime.GC()
	before, err := redisInfo(ctx, c, "memory", "used_memory")
	if err != nil {
		return fail("INFO", err)
	}
	const agent = "agent-incident"
	principal := broker.Principal{Issuer: "bench", Subject: agent}
	grant := broker.Grant{Tools: []string{"tickets.read", "kb.search"}, Audiences: []string{"https://tools.example.com"}, Scopes: []string{"tickets:read"}}
	sample := make([]string, res.sample)
	now := time.Now()
	t0 := time.Now()
	err = parallel(n, 32, func(i int) error {
		id := fmt.Sprintf("tsk_%s_%08d", prefix, i)
		t := broker.Task{ID: id, State: broker.StateActive, Agent: agent, Issuer: "bench", Template: "triage",
			Intent: "triage ticket 4521", Tools: grant.Tools, CreatedAt: now, Deadline: now.Add(10 * time.Minute)}
		cred := []broker.Credential{{ID: "jti_" + id, Kind: broker.KindJWT, TaskID: id, IssuedAt: now, ExpiresAt: t.Deadline}}
		if i < len(sample) {
			m, err := tokens.Mint(ctx, t, principal, grant)
			if err != nil {
				return err
			}
			cred = []broker.Credential{m[0].Credential}
			sample[i], _ = m[0].Material["access_token"].(string)
		}
		return l.Record(ctx, t, cred)
	})
	res.seed = time.Since(t0)
	if err != nil {
		return fail("seeding", err)
	}
	after, err := redisInfo(ctx, c, "memory", "used_memory")
	if err != nil {
		return fail("INFO", err)
	}
	res.bytesPerTask = float64(after-before) / float64(n)
	if act, err := activeCount(ctx, svc, sample); err != nil || act != len(sample) {
		return fail("before revoking", fmt.Errorf("%d of %d sampled tokens active (%v)", act, len(sample), err))
	}

	jctx, stopJobs := context.WithCancel(ctx)
	defer stopJobs()
	admin.Start(jctx, time.Hour) // the base context of background jobs
	who := incident.AdminPrincipal{Issuer: "corp", Subject: "bench", Role: incident.RoleResponder}
	t0 = time.Now()
	job, err := admin.Revoke(ctx, who, incident.Selector{Agent: agent, Issuer: "bench"}, "bench incident")
	res.answered = time.Since(t0)
	if err != nil {
		return fail("revoking", err)
	}
	for {
		act, err := activeCount(ctx, svc, sample)
		if err != nil {
			return fail("introspecting", err)
		}
		res.passes++
		if act == 0 {
			res.inactive = time.Since(t0)
			break
		}
		if time.Since(t0) > time.Minute {
			return fail("introspecting", fmt.Errorf("%d sampled tokens still active a minute later", act))
		}
	}
	for {
		j, err := admin.Job(ctx, job.ID)
		if err == nil && j.State == incident.JobDone {
			res.jobDone = time.Since(t0)
			if j.Revoked != n {
				return fail("job", fmt.Errorf("revoked %d of %d", j.Revoked, n))
			}
			break
		}
		if time.Since(t0) > 5*time.Minute {
			return fail("job", fmt.Errorf("not done after 5 minutes: %+v %v", j, err))
		}
		time.Sleep(10 * time.Millisecond)
	}
	return res
}

// activeCount introspects every token through the service, 8 at a time.
func activeCount(ctx context.Context, svc *broker.Service, toks []string) (int, error) {
	var n atomic.Int64
	err := parallel(len(toks), 8, func(i int) error {
		in, err := svc.Introspect(ctx, toks[i])
		if in.Active {
			n.Add(1)
		}
		return err
	})
	return int(n.Load()), err
}

// verifierResult is the tool-server verifier checking warm task tokens with
// the revocation feed live.
type verifierResult struct {
	checks     int
	elapsed    time.Duration
	httpCalls  int64 // requests to Valet during the measured window
	redisTrips int64 // round trips on Valet's Redis client during it (reaper, feed: background)
	err        error
}

// countingTransport counts the requests a verifier sends to Valet.
type countingTransport struct{ n atomic.Int64 }

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

// verifierChecks runs a verify.Verifier following Valet's revocation feed
// and calls Check on GOMAXPROCS goroutines for d, over task tokens that
// were each checked once before (warm: keys fetched, feed live).
func verifierChecks(ctx context.Context, v *valet, taskTokens []string, d time.Duration) verifierResult {
	var res verifierResult
	ct := &countingTransport{}
	vf, err := verify.New(verify.Config{Issuer: v.url, Audience: "https://tools.example.com", ClientID: clientID,
		ClientSecret: clientSecret, HTTPClient: &http.Client{Transport: ct, Timeout: 10 * time.Second}})
	if err != nil {
		res.err = err
		return res
	}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	go vf.Run(fctx)
	for deadline := time.Now().Add(10 * time.Second); !vf.Live(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			res.err = errors.New("the revocation feed never went live")
			return res
		}
	}
	reqs := make([]*http.Request, len(taskTokens))
	for i, tok := range taskTokens {
		reqs[i], _ = http.NewRequest(http.MethodGet, "http://tools.example.com/tickets/1", nil)
		reqs[i].Header.Set("Authorization", "Bearer "+tok)
		if _, err := vf.Check(ctx, reqs[i], "tickets.read"); err != nil {
			res.err = fmt.Errorf("warming up: %w", err)
			return res
		}
	}
	workers := runtime.GOMAXPROCS(0)
	counts := make([]int, workers)
	var firstErr atomic.Value
	h0, r0 := ct.n.Load(), v.hook.trips.Load()
	t0 := time.Now()
	end := t0.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; time.Now().Before(end); i += workers {
				if _, err := vf.Check(ctx, reqs[i%len(reqs)], "tickets.read"); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				counts[w]++
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(t0)
	res.httpCalls, res.redisTrips = ct.n.Load()-h0, v.hook.trips.Load()-r0
	for _, c := range counts {
		res.checks += c
	}
	if err, _ := firstErr.Load().(error); err != nil {
		res.err = err
	}
	return res
}
