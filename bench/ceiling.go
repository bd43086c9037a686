package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

// The ceiling is what no broker can avoid for one declaration: take the
// request and write the answer over HTTP, verify the identity token's RS256
// signature, evaluate the template's CEL, sign the EdDSA task token, write
// the ledger records to Redis in one round trip (and the CPU redis-server
// spends on them). Each part is a Go benchmark at full parallelism
// (b.RunParallel); its CPU cost per op is what getrusage says this process
// spent over the benchmark ÷ b.N, plus, for the Redis part, what
// redis-server spent (INFO cpu). The ceiling is
//
//	ceiling ops/s = GOMAXPROCS / Σ (CPU cost per op of each part)
//
// the throughput of a broker that did nothing but those steps on every
// core of this machine (Redis included, as it shares them).

// ceilingFixture holds what the ceiling benchmarks work on. Build it once.
type ceilingFixture struct {
	idTokens []string
	idKey    jose.JSONWebKey
	tmpl     *policy.Template
	p        broker.Principal
	d        broker.Declaration
	edKey    ed25519.PrivateKey
	signing  []byte // header.payload of a real task token
	ledger   *revocation.RedisLedger
	identity *identity.Verifier
	tokens   *issuers.JWT
	redis    *redis.Client // the ledger's, also read for redis-server's CPU
	answer   int           // bytes of a declaration's answer; the HTTP part writes as many
	idToken  string        // one identity token, for the HTTP part's request
}

// newCeilingFixture mints idTokens distinct identity tokens from p and
// connects a ledger to redisURL under its own key prefix.
func newCeilingFixture(ctx context.Context, p *idp, redisURL string, idTokens int) (*ceilingFixture, error) {
	f := &ceilingFixture{idKey: jose.JSONWebKey{Key: p.key.Public(), KeyID: p.kid, Algorithm: "RS256", Use: "sig"}}
	var err error
	if f.idTokens, err = p.tokens(idTokens, runtime.GOMAXPROCS(0)); err != nil {
		return nil, err
	}
	set, err := policy.Load([]policy.File{{Name: "bench.yaml", Data: []byte(benchTemplates)}}, []string{"bench"})
	if err != nil {
		return nil, err
	}
	var ok bool
	if f.tmpl, ok = set.Get("triage"); !ok {
		return nil, errors.New("template triage missing")
	}
	f.p = broker.Principal{Issuer: "bench", IssuerURL: p.url, Subject: "agent-000001", Claims: map[string]any{
		"iss": p.url, "aud": audience, "sub": "agent-000001", "iat": float64(time.Now().Unix()), "exp": float64(time.Now().Add(time.Hour).Unix()),
	}}
	f.d = broker.Declaration{Template: "triage", Intent: "triage ticket 4521", Tools: []string{"tickets.read", "kb.search"}, TTL: 10 * time.Minute}

	_, f.edKey, err = ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	f.tokens, err = issuers.NewJWT(issuers.JWTConfig{Issuer: "http://127.0.0.1:1", Keys: []issuers.SigningKey{{Private: f.edKey}}}, time.Now)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	task := broker.Task{ID: "tsk_ceilingceilingceilingceiling", State: broker.StateActive, Agent: f.p.Subject, Issuer: "bench",
		Template: "triage", Intent: f.d.Intent, Tools: f.d.Tools, CreatedAt: now, Deadline: now.Add(10 * time.Minute)}
	minted, err := f.tokens.Mint(ctx, task, f.p, broker.Grant{Template: f.tmpl, Tools: f.d.Tools, TTL: 10 * time.Minute,
		Audiences: f.tmpl.Audiences, Scopes: f.tmpl.Scopes})
	if err != nil {
		return nil, err
	}
	tok, _ := minted[0].Material["access_token"].(string)
	f.signing = []byte(tok[:strings.LastIndexByte(tok, '.')])

	// The cache off: the informational row is the full check a new token costs.
	f.identity, err = identity.New(ctx, []identity.IssuerConfig{{Name: "bench", IssuerURL: p.url, Audiences: []string{audience},
		StaticJWKS: p.jwks}}, identity.Options{CacheSize: -1})
	if err != nil {
		return nil, err
	}
	c, err := revocation.NewClient(redisURL)
	if err != nil {
		return nil, err
	}
	f.redis = c
	f.answer = 1500
	f.idToken = f.idTokens[0]
	f.ledger, err = revocation.NewRedisLedger(c, revocation.RedisOptions{Prefix: "ceiling"})
	return f, err
}

// part is one benchmark of the ceiling, or an informational one beside it.
type part struct {
	name    string
	inSum   bool // counts towards the ceiling
	bench   func(b *testing.B)
	comment string
	// redisCPU: redis-server's CPU over the benchmark is part of its cost.
	redisCPU bool
}

func (f *ceilingFixture) parts() []part {
	return []part{
		{name: "HTTP request in, answer out (loopback, trivial handler)", inSum: true, bench: f.benchHTTP,
			comment: "client and server of one round trip, the declaration's bytes each way, 32 in flight"},
		{name: "verify RS256 identity token (go-jose)", inSum: true, bench: f.benchVerifyRS256, comment: "ParseSignedCompact + Verify, RSA-2048"},
		{name: "evaluate template CEL", inSum: true, bench: f.benchCEL, comment: "principal rule + template condition"},
		{name: "sign EdDSA task token", inSum: true, bench: f.benchSignEdDSA, comment: "ed25519.Sign over a real task token"},
		{name: "ledger Record, Redis, 1 round trip (+ redis-server CPU)", inSum: true, bench: f.benchRedisRecord,
			comment: "the record script, 32 in flight", redisCPU: true},
		{name: "(info) Identity.Authenticate, cache off", bench: f.benchAuthenticate, comment: "the broker's whole identity check of a new token"},
		{name: "(info) JWT.Mint", bench: f.benchMint, comment: "the broker's whole task token mint"},
	}
}

// benchHTTP is what every broker pays to take a declaration over HTTP and
// answer it, with nothing in between: a loopback http.Server whose handler
// reads the body and writes an answer as long as a real declaration's,
// driven by an http.Client, both in this process, 32 requests in flight.
func (f *ceilingFixture) benchHTTP(b *testing.B) {
	answer := []byte(`{"x":"` + strings.Repeat("a", max(0, f.answer-8)) + `"}`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(answer)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	tr := &http.Transport{MaxIdleConns: 64, MaxIdleConnsPerHost: 64, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	url := "http://" + ln.Addr().String() + "/v1/tasks"
	b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(declarationBody))
			if err != nil {
				b.Error(err)
				return
			}
			req.Header.Set("Authorization", "Bearer "+f.idToken)
			req.Header.Set("Content-Type", "application/json")
			status, _, err := do(client, req)
			if err != nil || status != http.StatusCreated {
				b.Errorf("status %d: %v", status, err)
				return
			}
		}
	})
}

// benchVerifyRS256 verifies identity token signatures as the broker's key
// set does: go-jose's ParseSignedCompact and Verify with the issuer's key.
func (f *ceilingFixture) benchVerifyRS256(b *testing.B) {
	var n atomic.Int64
	algs := []jose.SignatureAlgorithm{jose.RS256}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			raw := f.idTokens[int(n.Add(1))%len(f.idTokens)]
			jws, err := jose.ParseSignedCompact(raw, algs)
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := jws.Verify(f.idKey.Key); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// benchCEL evaluates the template's principal rule and its conditions.
func (f *ceilingFixture) benchCEL(b *testing.B) {
	now := time.Now()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := f.p.PolicyIdentity()
			if ok, err := f.tmpl.AdmitsPrincipal(id); !ok || err != nil {
				b.Errorf("principal not admitted: %v", err)
				return
			}
			if rule, err := f.tmpl.Check(id, nil, policy.Request{Template: f.d.Template, Intent: f.d.Intent, Tools: f.d.Tools, TTL: f.d.TTL, Context: f.d.Context}, now); rule != "" || err != nil {
				b.Errorf("denied by %s: %v", rule, err)
				return
			}
		}
	})
}

func (f *ceilingFixture) benchSignEdDSA(b *testing.B) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = ed25519.Sign(f.edKey, f.signing)
		}
	})
}

// benchRedisRecord records a task with its task token credential, as
// Declare does, with 32 calls in flight (the concurrency the target is
// stated at).
func (f *ceilingFixture) benchRedisRecord(b *testing.B) {
	ctx := context.Background()
	var n atomic.Int64
	prefix := fmt.Sprintf("tsk_%d_", time.Now().UnixNano())
	b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			now := time.Now()
			id := prefix + fmt.Sprint(n.Add(1))
			t := broker.Task{ID: id, State: broker.StateActive, Agent: f.p.Subject, Issuer: "bench", Template: "triage",
				Intent: f.d.Intent, Tools: f.d.Tools, CreatedAt: now, Deadline: now.Add(10 * time.Minute)}
			c := []broker.Credential{{ID: "jti-" + id, Kind: broker.KindJWT, TaskID: id, IssuedAt: now, ExpiresAt: t.Deadline}}
			if err := f.ledger.Record(ctx, t, c); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func (f *ceilingFixture) benchAuthenticate(b *testing.B) {
	ctx := context.Background()
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.identity.Authenticate(ctx, f.idTokens[int(n.Add(1))%len(f.idTokens)]); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func (f *ceilingFixture) benchMint(b *testing.B) {
	ctx := context.Background()
	g := broker.Grant{Template: f.tmpl, Tools: f.d.Tools, TTL: 10 * time.Minute, Audiences: f.tmpl.Audiences, Scopes: f.tmpl.Scopes}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			now := time.Now()
			task := broker.Task{ID: "tsk_mint", State: broker.StateActive, Agent: f.p.Subject, Issuer: "bench",
				Template: "triage", Tools: f.d.Tools, CreatedAt: now, Deadline: now.Add(10 * time.Minute)}
			if _, err := f.tokens.Mint(ctx, task, f.p, g); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// partResult is one part measured once.
type partResult struct {
	nsPerOp  float64 // wall time per op with every core busy
	cpuPerOp float64 // ns of CPU per op: this process's, plus redis-server's for a redisCPU part
	redisNs  float64 // of which redis-server's
	allocs   int64
	failed   bool
}

func measurePart(p part) partResult {
	r := testing.Benchmark(p.bench)
	if r.N == 0 {
		return partResult{failed: true}
	}
	ns := float64(r.T.Nanoseconds()) / float64(r.N)
	return partResult{nsPerOp: ns, cpuPerOp: ns * float64(runtime.GOMAXPROCS(0)), allocs: r.AllocsPerOp()}
}

// measure runs p and counts the CPU its last (reported) round used:
// getrusage of this process, and redis-server's INFO cpu for a redisCPU
// part.
func (f *ceilingFixture) measure(p part) partResult {
	ctx := context.Background()
	var n int
	var self, red time.Duration
	redOK := false
	r := testing.Benchmark(func(b *testing.B) {
		s0 := selfCPU()
		r0, ok0 := redisCPU(ctx, f.redis)
		p.bench(b)
		s1 := selfCPU()
		r1, ok1 := redisCPU(ctx, f.redis)
		n, self, red, redOK = b.N, s1-s0, r1-r0, ok0 && ok1
	})
	if r.N == 0 || n == 0 {
		return partResult{failed: true}
	}
	pr := partResult{nsPerOp: float64(r.T.Nanoseconds()) / float64(r.N), allocs: r.AllocsPerOp()}
	pr.cpuPerOp = float64(self) / float64(n)
	if p.redisCPU {
		if !redOK {
			pr.failed = true
		}
		pr.redisNs = float64(red) / float64(n)
		pr.cpuPerOp += pr.redisNs
	}
	return pr
}
