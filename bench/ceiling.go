package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

// The ceiling is what no broker can avoid for one declaration: verify the
// identity token's RS256 signature, evaluate the template's CEL, sign the
// EdDSA task token, write the ledger records to Redis in one round trip.
// Each part is a Go benchmark at full parallelism (b.RunParallel), so its
// ns/op is wall time per operation with every core busy. The ceiling is
//
//	ceiling ops/s = 1 / Σ (ns/op of each part)
//	             = GOMAXPROCS / Σ (CPU cost per op of each part)
//
// the throughput of a broker that did nothing but those four steps.

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

	f.identity, err = identity.New(ctx, []identity.IssuerConfig{{Name: "bench", IssuerURL: p.url, Audiences: []string{audience},
		StaticJWKS: p.jwks}}, identity.Options{})
	if err != nil {
		return nil, err
	}
	c, err := revocation.NewClient(redisURL)
	if err != nil {
		return nil, err
	}
	f.ledger, err = revocation.NewRedisLedger(c, revocation.RedisOptions{Prefix: "ceiling"})
	return f, err
}

// part is one benchmark of the ceiling, or an informational one beside it.
type part struct {
	name    string
	inSum   bool // counts towards the ceiling
	bench   func(b *testing.B)
	comment string
}

func (f *ceilingFixture) parts() []part {
	return []part{
		{"verify RS256 identity token (go-jose)", true, f.benchVerifyRS256, "ParseSignedCompact + Verify, RSA-2048"},
		{"evaluate template CEL", true, f.benchCEL, "principal rule + template condition"},
		{"sign EdDSA task token", true, f.benchSignEdDSA, "ed25519.Sign over a real task token"},
		{"ledger Record, Redis, 1 round trip", true, f.benchRedisRecord, "EVAL of the record script, 32 in flight"},
		{"(info) Identity.Authenticate", false, f.benchAuthenticate, "the broker's whole identity check"},
		{"(info) JWT.Mint", false, f.benchMint, "the broker's whole task token mint"},
	}
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
	nsPerOp float64
	allocs  int64
	failed  bool
}

func measurePart(p part) partResult {
	r := testing.Benchmark(p.bench)
	if r.N == 0 {
		return partResult{failed: true}
	}
	return partResult{nsPerOp: float64(r.T.Nanoseconds()) / float64(r.N), allocs: r.AllocsPerOp()}
}
