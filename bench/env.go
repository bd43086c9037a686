package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

// audience is the aud of every identity token, for Valet and Vault alike.
const audience = "valet"

// benchTemplates is the one template the declarations use: a principal rule
// and a template condition, both CEL.
const benchTemplates = `
templates:
  - name: triage
    description: Triage support tickets.
    principals:
      - issuer: bench
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read, tickets.comment, "kb.*"]
    audiences: [https://tools.example.com]
    scopes: [tickets:read]
    conditions:
      - name: intent-stated
        expression: 'size(request.intent) >= 5 && request.tools.all(t, t != "tickets.delete")'
`

// declarationBody is what every agent declares.
const declarationBody = `{"template":"triage","intent":"triage ticket 4521","tools":["tickets.read","kb.search"],"ttl_seconds":600}`

const (
	clientID     = "tool-server"
	clientSecret = "bench-client-secret-0123456789"
)

// redisServer is a private redis-server on a free loopback port.
type redisServer struct {
	cmd  *exec.Cmd
	dir  string
	addr string
	done chan struct{}
}

func startRedis(dir string) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server not found on PATH (Debian: apt-get install redis-server)")
	}
	port, err := testkit.FreePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", "redis.log")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	r := &redisServer{cmd: cmd, dir: dir, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(r.done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c := redis.NewClient(&redis.Options{Addr: r.addr})
		err := c.Ping(context.Background()).Err()
		c.Close()
		if err == nil {
			return r, nil
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("redis-server on %s did not answer PING: %v", r.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (r *redisServer) url() string { return "redis://" + r.addr + "/0" }
func (r *redisServer) pid() int    { return r.cmd.Process.Pid }

func (r *redisServer) stop() {
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// idp is an OIDC issuer on a loopback listener: discovery and JWKS, one
// RSA-2048 key, RS256 tokens. Valet and Vault trust the same one.
type idp struct {
	url  string
	key  *rsa.PrivateKey
	kid  string
	jwks []byte
	srv  *http.Server
	sign jose.Signer
}

func startIdP() (*idp, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &idp{url: "http://" + ln.Addr().String(), key: key, kid: "bench-rs256"}
	p.jwks, err = json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: p.kid, Algorithm: "RS256", Use: "sig"}}})
	if err != nil {
		return nil, err
	}
	p.sign, err = jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", p.kid))
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": p.url, "jwks_uri": p.url + "/jwks", "authorization_endpoint": p.url + "/authorize",
			"response_types_supported": []string{"id_token"}, "subject_types_supported": []string{"public"},
			"id_token_signing_alg_values_supported": []string{"RS256"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(p.jwks)
	})
	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// token signs an identity token for agent, valid for an hour.
func (p *idp) token(agent string, now time.Time) (string, error) {
	claims, err := json.Marshal(map[string]any{
		"iss": p.url, "aud": audience, "sub": agent, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	if err != nil {
		return "", err
	}
	jws, err := p.sign.Sign(claims)
	if err != nil {
		return "", err
	}
	return jws.CompactSerialize()
}

// tokens mints n identity tokens for n distinct agents, in parallel.
func (p *idp) tokens(n, workers int) ([]string, error) {
	out := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	now := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t, err := p.token(fmt.Sprintf("agent-%06d", i), now)
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				out[i] = t
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return nil, err
	}
	return out, nil
}

func (p *idp) stop() { _ = p.srv.Close() }

// countHook counts Redis round trips: one per command sent alone, one per
// pipeline (EVAL counts as one command).
type countHook struct{ trips, cmds atomic.Int64 }

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.trips.Add(1)
		h.cmds.Add(1)
		return next(ctx, cmd)
	}
}
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.trips.Add(1)
		h.cmds.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// valet is a broker built through internal/server as `valet serve` builds
// it (Redis ledger, EdDSA task tokens, the trusted issuer, templates,
// controls and epochs, the revocation feed, the reaper every second, audit
// to a file and its copy to the Redis audit stream, JSON logs at info),
// serving on a real loopback listener.
type valet struct {
	url string
	svc *broker.Service
	// stopServing ends Run (graceful shutdown) and waits for it.
	stopServing func()
	ledger      *revocation.RedisLedger
	redis       *redis.Client
	hook        *countHook
	identity    *identity.Verifier
	close       []func()
}

// valetConfig is what differs between the bench's brokers.
type valetConfig struct {
	// prefix of the Redis keys (ledger, controls, feed, audit stream) and
	// of the audit file's name; default "valet".
	prefix string
	// syncInterval, when set, is audit.sync: interval with this bound;
	// otherwise audit.sync: grant (an fsync before every answer).
	syncInterval time.Duration
}

func startValet(ctx context.Context, p *idp, redisURL, dir string) (*valet, error) {
	return startValetWith(ctx, p, redisURL, dir, valetConfig{})
}

func startValetWith(ctx context.Context, p *idp, redisURL, dir string, cfg valetConfig) (*valet, error) {
	if cfg.prefix == "" {
		cfg.prefix = "valet"
	}
	v := &valet{hook: &countHook{}}
	ok := false
	defer func() {
		if !ok {
			v.stop()
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	v.close = append(v.close, func() { ln.Close() })
	v.url = "http://" + ln.Addr().String()

	logFile, err := os.Create(filepath.Join(dir, cfg.prefix+".log"))
	if err != nil {
		return nil, err
	}
	v.close = append(v.close, func() { logFile.Close() })
	log := slog.New(slog.NewJSONHandler(logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))

	v.redis, err = revocation.NewClient(redisURL)
	if err != nil {
		return nil, err
	}
	v.redis.AddHook(v.hook)
	v.close = append(v.close, func() { v.redis.Close() })
	// As serve (serveRedis): the audit trail's copy in the Redis stream,
	// written by a chain of its own.
	trail, err := audit.NewRedisWriter(v.redis, audit.RedisWriterOptions{Prefix: cfg.prefix})
	if err != nil {
		return nil, err
	}
	stream := audit.NewLog(trail)
	v.ledger, err = revocation.NewRedisLedger(v.redis, revocation.RedisOptions{Prefix: cfg.prefix, Trail: stream})
	if err != nil {
		return nil, err
	}
	key, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		return nil, err
	}
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: v.url, Keys: []issuers.SigningKey{{Private: key}}}, time.Now)
	if err != nil {
		return nil, err
	}
	verifier, err := identity.New(ctx, []identity.IssuerConfig{{Name: "bench", IssuerURL: p.url, Audiences: []string{audience}}},
		identity.Options{SelfIssuer: v.url, Logger: log})
	if err != nil {
		return nil, err
	}
	v.identity = verifier
	if err := verifier.Ready(ctx); err != nil {
		return nil, fmt.Errorf("loading the issuer's keys: %w", err)
	}
	templates, err := policy.Load([]policy.File{{Name: "bench.yaml", Data: []byte(benchTemplates)}}, []string{"bench"})
	if err != nil {
		return nil, err
	}
	auditor, auditFile, err := audit.OpenFile(filepath.Join(dir, cfg.prefix+".audit.jsonl"))
	if err != nil {
		return nil, err
	}
	v.close = append(v.close, func() { auditFile.Close() })
	if cfg.syncInterval > 0 {
		stopSync, err := auditor.SyncEvery(cfg.syncInterval)
		if err != nil {
			return nil, err
		}
		v.close = append(v.close, func() { _ = stopSync() })
	}
	controls, err := revocation.NewControls(v.redis, cfg.prefix, 5*time.Second)
	if err != nil {
		return nil, err
	}
	feedClient := revocation.NewFeedClient(v.redis, 4) // followers never take the ledger's pool
	v.close = append(v.close, func() { feedClient.Close() })
	srv, err := server.New(ctx, server.Options{
		PublicURL: v.url, Identity: verifier, Tokens: tokens, Ledger: v.ledger, Epochs: v.ledger, Loss: v.ledger, Controls: controls,
		Auditors: []broker.Auditor{auditor, stream}, Templates: templates, Agent: broker.AgentConfig{Limiter: v.ledger}, Records: v.ledger,
		Clients: []clientauth.Client{{ID: clientID, SecretSHA256: sha256Of(clientSecret)}},
		Feed:    revocation.NewFeed(feedClient, cfg.prefix), Ready: []func(context.Context) error{verifier.Ready},
		ReapInterval: time.Second, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	v.svc = srv.Service()
	rctx, stopServing := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- srv.Run(rctx, ln) }()
	v.stopServing = func() {
		stopServing()
		<-done
	}
	ok = true
	return v, nil
}

func (v *valet) stop() {
	if v.stopServing != nil {
		v.stopServing()
	}
	for i := len(v.close) - 1; i >= 0; i-- {
		v.close[i]()
	}
}

// vault is a Vault dev server (in-memory storage, no audit device) with a
// JWT auth method that trusts the same issuer as Valet.
type vault struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{}
	logf *os.File
}

const vaultRootToken = "bench-root"

// vaultBinary finds Vault: $VALET_VAULT_BIN, /work/main/.bin/vault, then
// <repo>/.bin/vault. It returns "" if none is there.
func vaultBinary(getenv func(string) string) string {
	cands := []string{getenv("VALET_VAULT_BIN"), "/work/main/.bin/vault"}
	if root, err := repoRoot(); err == nil {
		cands = append(cands, filepath.Join(root, ".bin", "vault"))
	}
	for _, c := range cands {
		if c == "" {
			continue
		}
		if st, err := os.Stat(c); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return c
		}
	}
	return ""
}

// repoRoot is the nearest folder above the working directory with go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

func startVault(ctx context.Context, bin string, p *idp, dir string) (*vault, error) {
	port, err := testkit.FreePort()
	if err != nil {
		return nil, err
	}
	vt := &vault{addr: "http://127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{})}
	vt.logf, err = os.Create(filepath.Join(dir, "vault.log"))
	if err != nil {
		return nil, err
	}
	vt.cmd = exec.Command(bin, "server", "-dev", "-dev-root-token-id="+vaultRootToken,
		"-dev-listen-address=127.0.0.1:"+strconv.Itoa(port), "-dev-no-store-token", "-log-level=warn")
	vt.cmd.Env = append(os.Environ(), "HOME="+dir, "VAULT_ADDR="+vt.addr)
	vt.cmd.Stdout, vt.cmd.Stderr = vt.logf, vt.logf
	vt.cmd.Dir = dir
	if err := vt.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting vault: %w", err)
	}
	go func() { _ = vt.cmd.Wait(); close(vt.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := vt.call(ctx, http.MethodGet, "/v1/sys/health", nil); err == nil {
			break
		}
		select {
		case <-vt.done:
			return nil, fmt.Errorf("vault exited at start; log:\n%s", tail(filepath.Join(dir, "vault.log")))
		default:
		}
		if time.Now().After(deadline) {
			vt.stop()
			return nil, fmt.Errorf("vault did not become healthy; log:\n%s", tail(filepath.Join(dir, "vault.log")))
		}
		time.Sleep(100 * time.Millisecond)
	}
	steps := []struct {
		path string
		body map[string]any
	}{
		{"/v1/sys/auth/jwt", map[string]any{"type": "jwt"}},
		{"/v1/auth/jwt/config", map[string]any{"jwks_url": p.url + "/jwks", "bound_issuer": p.url}},
		{"/v1/auth/jwt/role/agent", map[string]any{
			"role_type": "jwt", "bound_audiences": []string{audience}, "user_claim": "sub",
			"token_ttl": "10m", "token_max_ttl": "15m", "token_policies": []string{"default"},
		}},
	}
	for _, s := range steps {
		if _, err := vt.call(ctx, http.MethodPost, s.path, s.body); err != nil {
			vt.stop()
			return nil, fmt.Errorf("configuring vault: %w", err)
		}
	}
	return vt, nil
}

// call is one admin request with the root token.
func (vt *vault) call(ctx context.Context, method, path string, body any) ([]byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, vt.addr+path, r)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", vaultRootToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return b, nil
}

func (vt *vault) pid() int { return vt.cmd.Process.Pid }

func (vt *vault) stop() {
	if vt.cmd != nil && vt.cmd.Process != nil {
		_ = vt.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-vt.done:
		case <-time.After(5 * time.Second):
			_ = vt.cmd.Process.Kill()
			<-vt.done
		}
	}
	if vt.logf != nil {
		vt.logf.Close()
	}
}

func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 20 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// rssBytes reads VmRSS of a process from /proc.
func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS line")
}

func sha256Of(s string) [32]byte { return sha256.Sum256([]byte(s)) }
