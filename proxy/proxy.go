// Package proxy is `valet proxy`, secretless mode: a process next to an
// agent that declares tasks to Valet for it, keeps the task's credentials
// in memory and hands the agent only an opaque handle, then forwards the
// agent's HTTP calls to the upstreams of the task's template, attaching
// the credential per request when the route's tool was granted, and
// refusing every call of a task that Valet's revocation feed says has
// ended (docs/proxy.md).
package proxy

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/verify"
)

// Config configures a Proxy.
type Config struct {
	// Valet is Valet's public URL.
	Valet string
	// Identity returns the workload identity token the proxy declares
	// tasks with; it is called for every declaration, so a refreshed
	// token file or command is picked up.
	Identity func(context.Context) (string, error)
	// ClientID and ClientSecret are the proxy's introspection client at
	// Valet: they read the revocation feed and authenticate the tool-call
	// reports of the calls it forwards.
	ClientID, ClientSecret string
	// Audience is the proxy's own audience: the templates used through it
	// list it, and it checks task tokens against it.
	Audience string
	// Templates are the template files Valet serves (the proxy reads the
	// upstreams blocks from them).
	Templates *policy.Set
	// Auditor records every refused request. Required.
	Auditor broker.Auditor
	// HTTPClient talks to Valet; default has a 10 s timeout.
	HTTPClient *http.Client
	// UpstreamTLS, when set, is the TLS configuration of upstream calls
	// (extra roots); default is the system's.
	UpstreamTLS *tls.Config
	// Watch is how often live tasks are checked against the deny set, so
	// in-flight calls of an ended task are cut; default 50 ms.
	Watch time.Duration
	// MaxBody caps a request body forwarded upstream; default 32 MiB.
	MaxBody int64
	// OAuthProviders are the OAuth providers upstreams with an
	// "oauth:<name>" credential get tokens from; every such credential of
	// the templates must name one.
	OAuthProviders []OAuthProvider
	// OAuthClient calls the providers' token endpoints; default has a
	// 10 s timeout and never follows a proxy from the environment.
	OAuthClient *http.Client
	Logger      *slog.Logger
	Now         func() time.Time
}

// Proxy holds the tasks declared through it and serves the agent's calls.
// It is safe for concurrent use.
type Proxy struct {
	cfg        Config
	verifier   *verify.Verifier
	oauth      *oauthTokens
	replays    *replayCache
	transports map[string]*http.Transport // by template + "\x00" + upstream name

	mu       sync.RWMutex
	byHandle map[[32]byte]*Task
	byID     map[string]*Task
	// ended keeps the handles of ended tasks until their deadline, so a
	// later call is told why it is refused.
	ended map[[32]byte]endedTask
}

type endedTask struct {
	id, reason string
	until      time.Time
}

// Task is a task declared through the proxy: what it was granted and its
// credentials, which never leave the process. Done closes when the task
// ends (completed, expired, revoked, its agent frozen); a listener that
// holds sessions of the task (the PostgreSQL listener) closes them
// then.
type Task struct {
	ID, Template, Agent string
	Tools               []string
	Deadline            time.Time

	handle [32]byte // SHA-256 of the handle
	// jkt, when set, is the thumbprint of the DPoP key the handle is
	// bound to: every request with it carries a proof by that key.
	jkt string

	mu    sync.Mutex
	creds credentials // zero once the task ended

	ctx    context.Context // cancelled when the task ends: in-flight calls stop
	cancel context.CancelFunc
	once   sync.Once
	reason string
}

// credentials are a task's secrets, in memory only.
type credentials struct {
	taskToken        string
	vaultToken       string
	dbUser, dbSecret string
}

// Done closes when the task has ended.
func (t *Task) Done() <-chan struct{} { return t.ctx.Done() }

// DatabaseLogin is the task's Vault database login, for a database
// listener; ok is false when the task has none or has ended.
func (t *Task) DatabaseLogin() (user, password string, ok bool) {
	c := t.secrets()
	if c.dbUser == "" {
		return "", "", false
	}
	return c.dbUser, c.dbSecret, true
}

// secrets is a copy of the task's credentials; all empty once it ended.
func (t *Task) secrets() credentials {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.creds
}

// Granted reports whether tool was granted to the task.
func (t *Task) Granted(tool string) bool {
	for _, g := range t.Tools {
		if g == tool {
			return true
		}
	}
	return false
}

// New checks cfg and builds a Proxy; Serve runs it.
func New(cfg Config) (*Proxy, error) {
	var errs []error
	if cfg.Identity == nil {
		errs = append(errs, errors.New("an identity token source is required"))
	}
	if cfg.Templates == nil {
		errs = append(errs, errors.New("templates are required"))
	}
	if cfg.Auditor == nil {
		errs = append(errs, errors.New("an auditor is required"))
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Watch <= 0 {
		cfg.Watch = 50 * time.Millisecond
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 32 << 20
	}
	cfg.Valet = strings.TrimSuffix(cfg.Valet, "/")
	v, err := verify.New(verify.Config{Issuer: cfg.Valet, Audience: cfg.Audience, ClientID: cfg.ClientID,
		ClientSecret: cfg.ClientSecret, HTTPClient: cfg.HTTPClient, Now: cfg.Now, Logger: cfg.Logger})
	if err != nil {
		errs = append(errs, err)
	}
	if cfg.OAuthClient == nil {
		cfg.OAuthClient = &http.Client{Timeout: oauthTimeout, Transport: &http.Transport{Proxy: nil, TLSClientConfig: cloneTLS(cfg.UpstreamTLS)}}
	}
	oauth, err := newOAuthTokens(cfg.OAuthProviders, cfg.Templates, cfg.OAuthClient, cfg.Now)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p := &Proxy{cfg: cfg, verifier: v, oauth: oauth, replays: newReplayCache(maxReplay), transports: map[string]*http.Transport{},
		byHandle: map[[32]byte]*Task{}, byID: map[string]*Task{}, ended: map[[32]byte]endedTask{}}
	for _, name := range cfg.Templates.Names() {
		t, _ := cfg.Templates.Get(name)
		for _, u := range t.Upstreams {
			p.transports[name+"\x00"+u.Name] = newTransport(u.AllowPrivate, cfg.UpstreamTLS)
		}
	}
	return p, nil
}

func cloneTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	return c.Clone()
}

// newHandle makes a handle: 256 random bits, worthless outside this
// process.
func newHandle() (string, [32]byte, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", [32]byte{}, err
	}
	h := "vph_" + base64.RawURLEncoding.EncodeToString(b[:])
	return h, sha256.Sum256([]byte(h)), nil
}

// handleID is how logs and the audit name a handle: a SHA-256 prefix.
func handleID(sum [32]byte) string { return hex.EncodeToString(sum[:6]) }

// lookup finds the live task of a handle; ended tells why a known handle
// no longer works.
func (p *Proxy) lookup(handle string) (t *Task, ended *endedTask) {
	if !strings.HasPrefix(handle, "vph_") || len(handle) > 64 {
		return nil, nil
	}
	sum := sha256.Sum256([]byte(handle))
	p.mu.RLock()
	defer p.mu.RUnlock()
	if t := p.byHandle[sum]; t != nil {
		return t, nil
	}
	if e, ok := p.ended[sum]; ok {
		return nil, &e
	}
	return nil, nil
}

// Task returns the live task a handle stands for, for listeners other
// than HTTP.
func (p *Proxy) Task(handle string) (*Task, bool) {
	t, _ := p.lookup(handle)
	return t, t != nil
}

func (p *Proxy) add(t *Task) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.byHandle[t.handle] = t
	p.byID[t.ID] = t
}

// end forgets a task's credentials and stops its in-flight calls.
func (p *Proxy) end(t *Task, reason string) {
	t.once.Do(func() {
		p.mu.Lock()
		delete(p.byHandle, t.handle)
		delete(p.byID, t.ID)
		p.ended[t.handle] = endedTask{id: t.ID, reason: reason, until: t.Deadline.Add(time.Minute)}
		p.mu.Unlock()
		t.mu.Lock()
		t.reason, t.creds = reason, credentials{}
		t.mu.Unlock()
		t.cancel()
		p.cfg.Logger.Info("proxy: task ended", "task_id", t.ID, "reason", reason)
	})
}

// live lists the live tasks.
func (p *Proxy) live() []*Task {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]*Task, 0, len(p.byID))
	for _, t := range p.byID {
		out = append(out, t)
	}
	return out
}

// watch ends the tasks that expired or that the deny set (or, while the
// feed is down, introspection) says are revoked or frozen, every Watch.
func (p *Proxy) watch(ctx context.Context) {
	tick := time.NewTicker(p.cfg.Watch)
	defer tick.Stop()
	lastSlow := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := p.cfg.Now()
		// Without the feed every check is an introspection: once a second.
		slow := !p.verifier.Live()
		if slow && now.Sub(lastSlow) < time.Second {
			continue
		}
		lastSlow = now
		for _, t := range p.live() {
			if !now.Before(t.Deadline) {
				p.end(t, "expired")
				continue
			}
			if _, err := p.check(ctx, t, t.Tools[0]); err != nil {
				var ve *verify.Error
				if errors.As(err, &ve) && ve.Status == http.StatusUnauthorized {
					p.end(t, "revoked")
				}
			}
		}
		p.mu.Lock()
		for k, e := range p.ended {
			if now.After(e.until) {
				delete(p.ended, k)
			}
		}
		p.mu.Unlock()
	}
}

// check asks the verifier whether t's token is still good for tool: signed
// by Valet, not expired, granting tool, and not revoked, frozen or under
// an epoch by what the feed said.
func (p *Proxy) check(ctx context.Context, t *Task, tool string) (verify.Claims, error) {
	r, err := p.tokenRequest(ctx, t)
	if err != nil {
		return verify.Claims{}, err
	}
	return p.verifier.Check(ctx, r, tool)
}

// tokenRequest is a request carrying t's task token, the shape the
// verifier checks and reports with.
func (p *Proxy) tokenRequest(ctx context.Context, t *Task) (*http.Request, error) {
	tok := t.secrets().taskToken
	if tok == "" {
		return nil, &verify.Error{Status: http.StatusUnauthorized, Message: "task ended", Err: errors.New("no token")}
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, p.cfg.Valet, nil)
	if err != nil {
		return nil, err
	}
	r.Header.Set("Authorization", "Bearer "+tok)
	return r, nil
}
