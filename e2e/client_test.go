package e2e

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/valet-dev/valet/client"
	"github.com/valet-dev/valet/client/valetapi"
)

// TestGoClient drives the hand-written Go client (package client) against a
// real broker, every answer checked against openapi.yaml: declare, renew,
// delegate, complete, and refusals as typed errors.
func TestGoClient(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates + renewTemplatesTail})
	c, err := client.New(e.srv.URL, e.client)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	ttl := 300
	g, err := c.Declare(ctx, e.identity("agent-go"), valetapi.Declaration{
		Template: "renewable", Intent: "triage ticket 4521", Tools: []string{"tickets.read", "tickets.comment"}, TtlSeconds: &ttl})
	if err != nil {
		t.Fatalf("Declare: %v", err)
	}
	if g.Task.State != valetapi.TaskStateActive || g.TaskToken() == "" {
		t.Fatalf("Declare answered %+v", g.Task)
	}

	e.clock.Advance(time.Minute)
	r, err := c.Renew(ctx, e.identity("agent-go"), g.Task.Id, 10*time.Minute)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if !r.Task.Deadline.After(g.Task.Deadline) || r.TaskToken() == "" || r.TaskToken() == g.TaskToken() {
		t.Errorf("Renew: deadline %s (was %s), new token %t", r.Task.Deadline, g.Task.Deadline, r.TaskToken() != g.TaskToken())
	}

	child, childToken, err := c.Delegate(ctx, client.Delegation{ParentToken: r.TaskToken(), ActorIdentityToken: e.identity("agent-sub"), Tools: []string{"tickets.read"}})
	if err != nil {
		t.Fatalf("Delegate: %v", err)
	}
	if child.Parent == nil || *child.Parent != g.Task.Id || childToken == "" {
		t.Errorf("Delegate answered %+v", child)
	}
	_, _, err = c.Delegate(ctx, client.Delegation{ParentToken: r.TaskToken(), ActorIdentityToken: e.identity("agent-sub"), Tools: []string{"kb.search"}})
	var ve *client.Error
	if !errors.As(err, &ve) || ve.Status != http.StatusForbidden || ve.RequestID == "" {
		t.Errorf("Delegate of a tool the parent lacks: %v; want a 403 *client.Error with a request id", err)
	}

	done, err := c.Complete(ctx, r.TaskToken(), g.Task.Id)
	if err != nil || done.State != valetapi.TaskStateCompleted {
		t.Fatalf("Complete: %+v, %v", done, err)
	}
	_, err = c.Renew(ctx, e.identity("agent-go"), g.Task.Id, 0)
	if !errors.Is(err, client.ErrConflict) || !errors.As(err, &ve) || ve.Status != http.StatusConflict {
		t.Errorf("Renew of a completed task: %v; want ErrConflict", err)
	}
	_, err = c.Declare(ctx, e.identity("agent-go"), valetapi.Declaration{Template: "renewable", Intent: "triage", Tools: []string{"nope"}})
	if !errors.Is(err, client.ErrForbidden) || !errors.As(err, &ve) || ve.Rule != "tools" || ve.Field != "tools[0]" {
		t.Errorf("Declare of a tool the template lacks: %v; want ErrForbidden, rule tools, field tools[0]", err)
	}
	if _, err := c.Declare(ctx, "not-a-token", valetapi.Declaration{Template: "renewable", Intent: "x", Tools: []string{"tickets.read"}}); !errors.Is(err, client.ErrUnauthenticated) {
		t.Errorf("Declare with a bad identity token: %v; want ErrUnauthenticated", err)
	}
}

// renewTemplatesTail adds a delegating template with a max_lifetime to
// agentTemplates.
const renewTemplatesTail = `
  - name: renewable
    principals:
      - issuer: test
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 5m, max: 15m, max_lifetime: 1h}
    tools: [tickets.read, tickets.comment]
    audiences: [https://tools.example.com]
    delegation:
      condition: 'claims.sub.startsWith("agent-")'
`
