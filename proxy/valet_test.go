package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/toolevents"
)

// The tests of this package that need Valet run a small one (memory
// ledger, built through internal/server as `valet serve` builds it) and a
// Proxy serving in front of it.

const (
	stackClient = "valet-proxy"
	stackSecret = "proxy-client-secret-canary-4f1d"
)

// syncBuffer is a bytes.Buffer safe for the proxy's loggers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// stack is Valet and a Proxy in front of it.
type stack struct {
	srv         *server.Server
	valetURL    string
	p           *Proxy
	url         string
	logs, trail *syncBuffer
	valetAudit  *syncBuffer
}

// newStack starts Valet with templates and a proxy configured by cfg
// (its Valet, identity, client, audience, templates, auditor and logger
// are filled in).
func newStack(t *testing.T, templates string, cfg Config) *stack {
	t.Helper()
	idp := oidctest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	st := &stack{valetURL: "http://" + ln.Addr().String(), logs: &syncBuffer{}, trail: &syncBuffer{}, valetAudit: &syncBuffer{}}
	key, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: st.valetURL, Keys: []issuers.SigningKey{{Private: key}}}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.New(context.Background(), []identity.IssuerConfig{{Name: "test", IssuerURL: idp.URL(), Audiences: []string{"valet"}}},
		identity.Options{Now: time.Now, SelfIssuer: st.valetURL})
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(templates)}}, []string{"test"})
	if err != nil {
		t.Fatal(err)
	}
	ledger := revocation.NewMemoryLedger(time.Now, time.Hour)
	st.srv, err = server.New(context.Background(), server.Options{PublicURL: st.valetURL, Identity: id, Tokens: tokens, Ledger: ledger,
		Auditors: []broker.Auditor{audit.NewLog(st.valetAudit)}, Templates: set, Feed: ledger.Feed(), Records: ledger,
		Agent:   broker.AgentConfig{Limiter: ledger},
		Clients: []clientauth.Client{{ID: stackClient, SecretSHA256: sha256.Sum256([]byte(stackSecret))}}, Now: time.Now, ReapInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	valetDone := make(chan error, 1)
	go func() { valetDone <- st.srv.Run(ctx, ln) }()

	cfg.Valet, cfg.ClientID, cfg.ClientSecret, cfg.Audience, cfg.Templates = st.valetURL, stackClient, stackSecret, "valet-proxy", set
	cfg.Identity = func(context.Context) (string, error) { return idp.Token(t, map[string]any{"sub": "agent-1"}), nil }
	cfg.Auditor = audit.NewLog(st.trail)
	cfg.Logger = slog.New(slog.NewJSONHandler(st.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.Watch == 0 {
		cfg.Watch = 20 * time.Millisecond
	}
	st.p, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	st.url = "http://" + pln.Addr().String()
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- st.p.Serve(ctx, pln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-proxyDone; err != nil {
			t.Errorf("proxy: %v", err)
		}
		<-valetDone
	})
	start := time.Now()
	for !st.p.verifier.Live() {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the proxy's revocation feed is not live")
		}
		time.Sleep(10 * time.Millisecond) // bounded polling of real background work
	}
	return st
}

// do is the agent: a plain HTTP call to the proxy.
func (st *stack) do(t *testing.T, method, path string, body io.Reader, hdr http.Header) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, st.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, b
}

// declare declares a task of template through the proxy; it returns the
// task id, the handle and the whole answer the agent got.
func (st *stack) declare(t *testing.T, template string, hdr http.Header, tools ...string) (string, string, []byte) {
	t.Helper()
	if hdr == nil {
		hdr = http.Header{}
	}
	hdr.Set("Content-Type", "application/json")
	status, _, body := st.do(t, http.MethodPost, "/v1/tasks", strings.NewReader(
		`{"template":"`+template+`","intent":"proxy test","tools":["`+strings.Join(tools, `","`)+`"]}`), hdr)
	if status != http.StatusCreated {
		t.Fatalf("declare through the proxy: %d %s", status, body)
	}
	var d struct {
		Task struct {
			ID string `json:"id"`
		} `json:"task"`
		Handle string `json:"handle"`
	}
	if err := json.Unmarshal(body, &d); err != nil || d.Task.ID == "" || !strings.HasPrefix(d.Handle, "vph_") {
		t.Fatalf("the proxy's answer: %v %s", err, body)
	}
	return d.Task.ID, d.Handle, body
}

// events waits (10 s at most) until the task's timeline holds n tool-call
// events and returns them, read as a responder's admin API reads them.
func (st *stack) events(t *testing.T, taskID string, n int) []toolevents.ToolEvent {
	t.Helper()
	start := time.Now()
	for {
		evs, err := st.srv.ToolEvents().AdminTaskEvents(context.Background(), taskID)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) >= n || time.Since(start) > 10*time.Second {
			return evs
		}
		time.Sleep(10 * time.Millisecond) // bounded polling of the report queue
	}
}
