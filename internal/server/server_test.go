package server

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

const testTemplate = `
templates:
  - name: triage
    principals: [{issuer: test}]
    ttl: {default: 1m, max: 5m}
    tools: [tickets.read]
    audiences: [https://tools.example.com]
`

// testOptions are the options of a small broker on the memory ledger, on a
// listener of its own.
func testOptions(t testing.TB, clock *testkit.Clock) (Options, net.Listener, *oidctest.Issuer, *revocation.MemoryLedger) {
	t.Helper()
	idp := oidctest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	key, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: url, Keys: []issuers.SigningKey{{Private: key}}}, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.New(context.Background(), []identity.IssuerConfig{{Name: "test", IssuerURL: idp.URL(), Audiences: []string{"valet"}}},
		identity.Options{Now: clock.Now, SelfIssuer: url})
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(testTemplate)}}, []string{"test"})
	if err != nil {
		t.Fatal(err)
	}
	ledger := revocation.NewMemoryLedger(clock.Now, time.Hour)
	return Options{PublicURL: url, Identity: id, Tokens: tokens, Ledger: ledger, Auditors: []broker.Auditor{audit.NewLog(&bytes.Buffer{})},
		Templates: set, Feed: ledger.Feed(), Now: clock.Now, ReapInterval: 10 * time.Millisecond}, ln, idp, ledger
}

// TestRunServesReapsAndShutsDown: Run serves the HTTP surface on the given
// listener, runs the reaper, and returns nil once its context ends, having
// closed the listener.
func TestRunServesReapsAndShutsDown(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	o, ln, idp, ledger := testOptions(t, clock)
	srv, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()

	resp, err := http.Get(o.PublicURL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /.well-known/jwks.json: %d", resp.StatusCode)
	}

	tok := idp.Token(t, map[string]any{"sub": "agent-7"}, oidctest.WithNow(clock.Now()))
	task, _, err := srv.Service().Declare(context.Background(), tok, broker.Declaration{Template: "triage", Intent: "triage ticket 1",
		Tools: []string{"tickets.read"}, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _, err := ledger.Task(context.Background(), task.ID)
		if err == nil && got.State == broker.StateExpired {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reaper did not end the task past its deadline: %+v %v", got, err)
		}
		time.Sleep(10 * time.Millisecond)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after its context ended: %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if c, err := net.Dial("tcp", strings.TrimPrefix(o.PublicURL, "http://")); err == nil {
		c.Close()
		t.Fatal("the listener still accepts connections after Run returned")
	}
}

// TestNewRejectsMissingParts: New names what is missing instead of
// building a server that fails later.
func TestNewRejectsMissingParts(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	for name, edit := range map[string]func(*Options){
		"no auditor":         func(o *Options) { o.Auditors = nil },
		"no task tokens":     func(o *Options) { o.Tokens = nil },
		"no ledger":          func(o *Options) { o.Ledger = nil },
		"admin, no controls": func(o *Options) { o.Admin = &AdminOptions{Roles: map[string]string{"admin": "true"}} },
	} {
		t.Run(name, func(t *testing.T) {
			o, ln, _, _ := testOptions(t, clock)
			ln.Close()
			edit(&o)
			if _, err := New(context.Background(), o); err == nil {
				t.Fatal("New accepted the options")
			}
		})
	}
}
