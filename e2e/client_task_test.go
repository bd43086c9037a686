package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/client"
	"github.com/valet-dev/valet/client/valetapi"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/stepup"
)

// TestGoClientTask drives client.Task, the surface a Go agent holds for
// one task: a DPoP-bound declaration, a reported tool call, an action that
// waits for a person's approval, Close on a panic, and KeepAlive up to the
// template's max_lifetime.
func TestGoClientTask(t *testing.T) {
	e := newEnv(t, envOptions{templates: actionTemplates, incident: true, agent: func(c *server.StepUpOptions) {
		actionAgentConfig(c)
		c.Approvals = stepup.ApprovalConfig{Clients: []clientauth.Client{{ID: clientID, SecretSHA256: sha(clientSecret)}}}
	}})
	c, err := client.New(e.srv.URL, e.client)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, err := dpop.NewSigner(key, jose.ES256)
	if err != nil {
		t.Fatal(err)
	}
	identity := func(context.Context) (string, error) { return e.identity("agent-a"), nil }
	decl := valetapi.Declaration{Template: "ops", Intent: "purge duplicate tickets", Tools: []string{"tickets.read", "tickets.purge"}}
	task, err := c.Start(ctx, identity, decl, client.WithDPoP(signer), client.WithClock(e.clock.Now))
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if info := e.introspect(task.Token()); info["active"] != true {
		t.Fatalf("task token not active: %v", info)
	}
	if cnf, _ := e.introspect(task.Token())["cnf"].(map[string]any); cnf["jkt"] != signer.JKT() {
		t.Fatalf("task token is not bound to the client's key: cnf %v", cnf)
	}

	ev, err := task.Report(ctx, valetapi.EventReport{Tool: "tickets.read", Outcome: valetapi.EventReportOutcomeOk})
	if err != nil || ev.Tool != "tickets.read" || ev.ReportedWith == "" {
		t.Fatalf("Report: %+v, %v", ev, err)
	}

	// tickets.purge needs a person: Action waits until the approval is
	// granted by an approver, then hands out the action token.
	pending := make(chan string, 1)
	type result struct {
		tok *client.ActionToken
		err error
	}
	got := make(chan result, 1)
	go func() {
		tok, err := task.Action(ctx, "tickets.purge", map[string]any{"ticket": "7"}, map[string]any{"why": "duplicate of 9"},
			20*time.Millisecond, func(id string) { pending <- id })
		got <- result{tok, err}
	}()
	var approval string
	select {
	case approval = <-pending:
	case r := <-got:
		t.Fatalf("Action did not wait for approval: %+v %v", r.tok, r.err)
	case <-time.After(30 * time.Second):
		t.Fatal("no approval filed")
	}
	if r := e.do(http.MethodPost, "/v1/approvals/"+approval+"/approve", "", "", nil, true); r.Status != http.StatusOK {
		t.Fatalf("approve: %d %s", r.Status, r.Body)
	}
	r := <-got
	if r.err != nil {
		t.Fatalf("Action after approval: %v", r.err)
	}
	if r.tok.Tool != "tickets.purge" || r.tok.Token == "" || r.tok.ArgsHash == "" || r.tok.JTI == "" {
		t.Fatalf("Action after approval: tool %q, jti %q, args hash %q, token present %t", r.tok.Tool, r.tok.JTI, r.tok.ArgsHash, r.tok.Token != "")
	}

	// A denied approval is ErrDenied.
	go func() {
		_, err := task.Action(ctx, "tickets.purge", map[string]any{"ticket": "8"}, nil, 20*time.Millisecond, func(id string) { pending <- id })
		got <- result{nil, err}
	}()
	approval = <-pending
	if r := e.do(http.MethodPost, "/v1/approvals/"+approval+"/deny", "", "", nil, true); r.Status != http.StatusOK {
		t.Fatalf("deny: %d %s", r.Status, r.Body)
	}
	if r := <-got; !errors.Is(r.err, client.ErrDenied) {
		t.Fatalf("Action after denial: %v, want ErrDenied", r.err)
	}

	// The work panics; the deferred Close still completes the task.
	func() {
		defer func() { _ = recover() }()
		defer task.Close()
		panic("the agent's tool loop failed")
	}()
	if g := task.Grant(); g.Task.State != valetapi.TaskStateCompleted {
		t.Fatalf("after a panic the task is %s, want completed", g.Task.State)
	}
	if info := e.introspect(task.Token()); info["active"] != false {
		t.Fatalf("task token still active after Close: %v", info)
	}
	if err := task.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// A closed task can do nothing more.
	if _, err := task.Report(ctx, valetapi.EventReport{Tool: "tickets.read", Outcome: valetapi.EventReportOutcomeOk}); !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("Report after Close: %v, want ErrUnauthenticated", err)
	}
}

// TestGoClientKeepAlive renews a task as its deadline nears, until the
// template's max_lifetime refuses, on Valet's fake clock.
func TestGoClientKeepAlive(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates + renewTemplatesTail})
	c, err := client.New(e.srv.URL, e.client)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ttl := 300
	task, err := c.Start(ctx, func(context.Context) (string, error) { return e.identity("agent-k"), nil },
		valetapi.Declaration{Template: "renewable", Intent: "long triage", Tools: []string{"tickets.read"}, TtlSeconds: &ttl})
	if err != nil {
		t.Fatal(err)
	}
	defer task.Close()
	first := task.Deadline()
	done := make(chan error, 1)
	go func() {
		done <- task.KeepAlive(ctx, client.KeepAliveOptions{Margin: time.Minute, TTL: 15 * time.Minute, Every: 5 * time.Millisecond, Now: e.clock.Now})
	}()
	e.clock.Advance(4*time.Minute + 30*time.Second) // within the margin of the first deadline
	testkit.EventuallyWithin(t, 20*time.Second, func() bool { return task.Deadline().After(first) }, "KeepAlive did not renew inside the margin")
	// Walk the clock past max_lifetime (1h): the renewal is refused and
	// KeepAlive says why.
	for range 8 {
		e.clock.Set(task.Deadline().Add(-30 * time.Second))
		select {
		case err := <-done:
			var ve *client.Error
			if !errors.As(err, &ve) || !strings.Contains(ve.Rule+ve.Message, "lifetime") {
				t.Fatalf("KeepAlive ended with %v, want a refusal naming max_lifetime", err)
			}
			if task.Deadline().Sub(first) > time.Hour {
				t.Fatalf("renewed past max_lifetime: %v after the first deadline", task.Deadline().Sub(first))
			}
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Fatal("KeepAlive kept renewing past the template's max_lifetime")
}
