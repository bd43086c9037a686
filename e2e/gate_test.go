package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/internal/testkit"
)

// gateTemplates: one template with everything the gate stands in front of:
// on-behalf-of users, delegation to agents of either issuer, a policy
// sensitive tool and an approval one.
const gateTemplates = `
templates:
  - name: gate
    principals: [{issuer: test}, {issuer: other}]
    users: [{issuer: test}]
    ttl: {default: 10m, max: 15m}
    tools: [tickets.read, "kb.*"]
    audiences: [https://tools.example.com]
    delegation: {condition: 'true'}
    sensitive_tools:
      - tool: kb.delete
        rule: policy
        condition: 'true'
      - tool: tickets.purge
        rule: approval
`

// gateScene is one broker with a delegation chain in place: agent-a (issuer
// test) acting for user-u, delegated to agent-b (issuer other); and, made
// with the child's token before any control: an action token, a pending
// approval and an approved one.
type gateScene struct {
	e                 *env
	other             *oidctest.Issuer
	root, rootTask    string
	child, childTask  string
	actionToken       string
	pending, approved string
}

func newGateScene(t *testing.T) *gateScene {
	t.Helper()
	other := oidctest.New(t)
	e := newEnv(t, envOptions{templates: gateTemplates, incident: true, other: other, agent: func(c *server.StepUpOptions) {
		c.Approvals.Clients = []clientauth.Client{{ID: clientID, SecretSHA256: sha(clientSecret)}}
	}})
	g := &gateScene{e: e, other: other}
	r := e.declare(e.identity("agent-a"), `{"template":"gate","intent":"answer user-u","tools":["tickets.read","kb.search","kb.delete","tickets.purge"],"subject_token":"`+
		e.user("user-u", "u@example.com", "")+`"}`)
	if r.Status != http.StatusCreated {
		t.Fatalf("declare: %d %s", r.Status, r.Body)
	}
	m := r.json(t)
	g.rootTask, g.root = m["task"].(map[string]any)["id"].(string), m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
	r = g.exchange(g.root, g.otherIdentity("agent-b"))
	if r.Status != http.StatusOK {
		t.Fatalf("exchange: %d %s", r.Status, r.Body)
	}
	g.child = r.json(t)["access_token"].(string)
	g.childTask = taskIDOf(t, g.child)
	s := &agentSession{e: e, taskID: g.childTask, token: g.child}
	g.actionToken = s.actionToken("kb.delete", `{"doc":"7"}`)
	g.pending = g.file(t)
	g.approved = g.file(t)
	if r := g.decide(g.approved); r.Status != http.StatusOK {
		t.Fatalf("approve before any control: %d %s", r.Status, r.Body)
	}
	return g
}

func (g *gateScene) otherIdentity(agent string) string {
	return g.other.Token(g.e.t, map[string]any{"sub": agent}, oidctest.WithNow(g.e.clock.Now()))
}

func (g *gateScene) exchange(parent, actorToken string) response {
	return g.exchangeTools(parent, actorToken, "tickets.read kb.delete tickets.purge")
}

func (g *gateScene) exchangeTools(parent, actorToken, tools string) response {
	return g.e.exchange(parent, "", tools, url.Values{"actor_token": {actorToken}})
}

func (g *gateScene) session() *agentSession {
	return &agentSession{e: g.e, taskID: g.childTask, token: g.child}
}

func (g *gateScene) file(t *testing.T) string {
	t.Helper()
	r := g.session().askAction("tickets.purge", `{"all":true}`)
	if r.Status != http.StatusAccepted {
		t.Fatalf("file approval: %d %s", r.Status, r.Body)
	}
	return r.json(t)["approval_id"].(string)
}

func (g *gateScene) decide(id string) response {
	return g.e.do(http.MethodPost, "/v1/approvals/"+id+"/approve", "", "", nil, true)
}

// taskIDOf reads a task token's task_id claim.
func taskIDOf(t *testing.T, tok string) string {
	return jwtPart(t, tok, 1)["task_id"].(string)
}

// TestGateEveryPathEveryControl guards finding 2 of issue 9: freeze,
// quarantine, distrust and revoked-before epochs (of the root agent, the
// template, the root issuer and the user acted for) stop every path that
// issues, consumes, reports or reads, for a delegated child whose own
// claims name none of them (its actor is agent-b of issuer other). On the
// old code only declaration obeyed the controls: the child exchanged,
// got action tokens, filed and collected approvals, reported and read.
func TestGateEveryPathEveryControl(t *testing.T) {
	rita := func(e *env) string { return e.adminToken("rita", "valet-responders") }
	control := func(body string) func(*gateScene) {
		return func(g *gateScene) {
			if r := g.e.adminDo(http.MethodPost, "/v1/admin/controls", rita(g.e), body); r.Status != http.StatusCreated {
				g.e.t.Fatalf("control %s: %d %s", body, r.Status, r.Body)
			}
		}
	}
	epoch := func(dim broker.Dimension, key string) func(*gateScene) {
		return func(g *gateScene) {
			g.e.clock.Advance(time.Second)
			if err := g.e.raw.SetEpoch(context.Background(), broker.Epoch{Dimension: dim, Key: key, Before: g.e.clock.Now()}); err != nil {
				g.e.t.Fatal(err)
			}
		}
	}
	cases := []struct {
		name  string
		apply func(*gateScene)
		// status is what every refused path answers: 403 for a control
		// (naming its rule), 401 for an epoch.
		status int
		rule   string
		// declarer declares afresh; epochs do not stop new declarations.
		declarer      func(*gateScene) string
		declareStatus int
	}{
		{"freeze root agent", control(`{"kind":"freeze_agent","target":"agent-a","reason":"leaked"}`), 403, "frozen-agent",
			func(g *gateScene) string { return g.e.identity("agent-a") }, 403},
		{"quarantine template", control(`{"kind":"quarantine_template","target":"gate"}`), 403, "quarantined-template",
			func(g *gateScene) string { return g.e.identity("agent-a") }, 403},
		{"distrust sub-agent issuer", control(`{"kind":"distrust_issuer","target":"other"}`), 403, "distrusted-issuer",
			func(g *gateScene) string { return g.otherIdentity("agent-x") }, 403},
		{"root agent epoch", epoch(broker.DimAgent, broker.AgentKey("test", "agent-a")), 401, "",
			func(g *gateScene) string { return g.e.identity("agent-a") }, 201},
		{"template epoch", epoch(broker.DimTemplate, "gate"), 401, "",
			func(g *gateScene) string { return g.e.identity("agent-a") }, 201},
		{"root issuer epoch", epoch(broker.DimIssuer, "test"), 401, "",
			func(g *gateScene) string { return g.e.identity("agent-a") }, 201},
		{"user epoch", epoch(broker.DimAgent, broker.AgentKey("test", "user-u")), 401, "",
			func(g *gateScene) string { return g.e.identity("agent-a") }, 201},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := newGateScene(t)
			e := g.e
			c.apply(g)
			refused := func(path string, r response) {
				t.Helper()
				if r.Status != c.status || (c.rule != "" && !strings.Contains(string(r.Body), `"rule":"`+c.rule+`"`)) {
					t.Errorf("%s: %d %s, want %d %s", path, r.Status, r.Body, c.status, c.rule)
				}
			}
			r := e.declare(c.declarer(g), `{"template":"gate","intent":"again","tools":["tickets.read"]}`)
			if r.Status != c.declareStatus {
				t.Errorf("declare: %d %s, want %d", r.Status, r.Body, c.declareStatus)
			}
			refused("exchange", g.exchange(g.child, e.identity("agent-c")))
			refused("action request", g.session().askAction("kb.delete", `{"doc":"8"}`))
			refused("approval file", g.session().askAction("tickets.purge", `{"all":false}`))
			if r := e.do(http.MethodPost, "/v1/actions/consume", "", "application/x-www-form-urlencoded",
				strings.NewReader("token="+g.actionToken), true); r.Status != http.StatusOK || r.json(t)["consumed"] != false {
				t.Errorf("consume: %d %s, want consumed false", r.Status, r.Body)
			}
			if r := g.decide(g.pending); r.Status != http.StatusConflict {
				t.Errorf("approval settle: %d %s, want 409", r.Status, r.Body)
			}
			req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/v1/tasks/"+g.childTask+"/actions/"+g.approved, nil)
			g.session().authorize(req, e.client)
			refused("approval status", e.send(req))
			refused("event report", e.do(http.MethodPost, "/v1/tasks/"+g.childTask+"/events", g.child, "application/json",
				strings.NewReader(`{"tool":"tickets.read","outcome":"ok"}`), false))
			refused("events read", e.do(http.MethodGet, "/v1/tasks/"+g.childTask+"/events", g.child, "", nil, false))
			refused("task read", e.do(http.MethodGet, "/v1/tasks/"+g.childTask, g.child, "", nil, false))
			if in := e.introspect(g.child); in["active"] != false {
				t.Errorf("introspect: %v, want inactive", in)
			}
		})
	}
}

// TestGateObservedAttacks replays the attacks of issue 9 finding 2 that
// the table does not spell out.
func TestGateObservedAttacks(t *testing.T) {
	t.Run("distrusted issuer as sub-agent", func(t *testing.T) {
		g := newGateScene(t)
		if r := g.e.adminDo(http.MethodPost, "/v1/admin/controls", g.e.adminToken("rita", "valet-responders"),
			`{"kind":"distrust_issuer","target":"other"}`); r.Status != http.StatusCreated {
			t.Fatalf("distrust: %d %s", r.Status, r.Body)
		}
		// The root's chain is all issuer test; only the actor is distrusted.
		if r := g.exchange(g.root, g.otherIdentity("agent-z")); r.Status != http.StatusForbidden || !strings.Contains(string(r.Body), "distrusted-issuer") {
			t.Fatalf("exchange to a distrusted issuer's agent: %d %s", r.Status, r.Body)
		}
		if r := g.exchange(g.root, g.e.identity("agent-c")); r.Status != http.StatusOK {
			t.Fatalf("exchange to a trusted agent: %d %s", r.Status, r.Body)
		}
	})
	t.Run("frozen agent may still complete its task", func(t *testing.T) {
		g := newGateScene(t)
		e := g.e
		if r := e.adminDo(http.MethodPost, "/v1/admin/controls", e.adminToken("rita", "valet-responders"),
			`{"kind":"freeze_agent","target":"agent-b"}`); r.Status != http.StatusCreated {
			t.Fatalf("freeze: %d %s", r.Status, r.Body)
		}
		if r := e.do(http.MethodPost, "/v1/tasks/"+g.childTask+"/complete", g.child, "", nil, false); r.Status != http.StatusOK {
			t.Fatalf("complete by a frozen agent: %d %s", r.Status, r.Body)
		}
		// Its token is now denied: neither read nor complete again.
		if r := e.do(http.MethodGet, "/v1/tasks/"+g.childTask, g.child, "", nil, false); r.Status != http.StatusUnauthorized {
			t.Fatalf("read with a completed task's token: %d %s", r.Status, r.Body)
		}
		if r := e.do(http.MethodPost, "/v1/tasks/"+g.childTask+"/complete", g.child, "", nil, false); r.Status != http.StatusUnauthorized {
			t.Fatalf("complete with a denied token: %d %s", r.Status, r.Body)
		}
	})
	t.Run("bulk job: introspected inactive is never exchanged", func(t *testing.T) {
		g := newGateScene(t)
		e := g.e
		// A job sets its epochs first and then ends tasks batch by batch:
		// between the two, the epoch alone must stop everything.
		e.clock.Advance(time.Second)
		if err := e.raw.SetEpoch(context.Background(), broker.Epoch{Dimension: broker.DimAgent, Key: broker.AgentKey("test", "agent-a"), Before: e.clock.Now()}); err != nil {
			t.Fatal(err)
		}
		if in := e.introspect(g.root); in["active"] != false {
			t.Fatalf("root still active under the epoch: %v", in)
		}
		if r := g.exchange(g.root, e.identity("agent-c")); r.Status != http.StatusUnauthorized {
			t.Fatalf("exchange of an inactive token: %d %s", r.Status, r.Body)
		}
		s := &agentSession{e: e, taskID: g.rootTask, token: g.root}
		if r := s.askAction("kb.delete", `{"doc":"9"}`); r.Status != http.StatusUnauthorized {
			t.Fatalf("action for an inactive token: %d %s", r.Status, r.Body)
		}
	})
	t.Run("on-behalf-of user job ends the agent's task", func(t *testing.T) {
		g := newGateScene(t)
		e := g.e
		r := e.adminDo(http.MethodPost, "/v1/admin/revocations", e.adminToken("rita", "valet-responders"), `{"selector":{"agent":"user-u"},"reason":"user-u compromised"}`)
		if r.Status != http.StatusOK && r.Status != http.StatusAccepted {
			t.Fatalf("revoke: %d %s", r.Status, r.Body)
		}
		job := r.json(t)["job"].(map[string]any)
		testkit.Eventually(t, func() bool {
			r := e.adminDo(http.MethodGet, "/v1/admin/revocations/"+job["id"].(string), e.adminToken("vera", "valet-viewers"), "")
			job = r.json(t)["job"].(map[string]any)
			return job["state"] == "done"
		}, "the job to finish")
		if job["tasks_matched"] != 2.0 {
			t.Fatalf("job matched %v tasks, want the root and its child: %v", job["tasks_matched"], job)
		}
		for _, id := range []string{g.rootTask, g.childTask} {
			task, _, err := e.raw.Task(context.Background(), id)
			if err != nil || task.State != broker.StateRevoked {
				t.Fatalf("task %s: %v %v, want revoked", id, task.State, err)
			}
		}
		if r := g.exchange(g.root, e.identity("agent-c")); r.Status != http.StatusUnauthorized {
			t.Fatalf("exchange after the job: %d %s", r.Status, r.Body)
		}
	})
}

// TestSensitiveToolsAttenuate guards issue 9 finding 5: a child delegated
// only tickets.read got a kb.delete action token and filed a tickets.purge
// approval. A sensitive tool is granted or not like any tool and
// attenuates the same way; the verifier refuses an action token for a
// tool the task token does not grant.
func TestSensitiveToolsAttenuate(t *testing.T) {
	g := newGateScene(t)
	e := g.e
	r := g.exchangeTools(g.root, e.identity("agent-c"), "tickets.read")
	if r.Status != http.StatusOK {
		t.Fatalf("exchange: %d %s", r.Status, r.Body)
	}
	narrow := r.json(t)["access_token"].(string)
	s := &agentSession{e: e, taskID: taskIDOf(t, narrow), token: narrow}
	for _, tool := range []string{"kb.delete", "tickets.purge"} {
		if r := s.askAction(tool, `{"doc":"7"}`); r.Status != http.StatusForbidden || r.json(t)["rule"] != "tools" {
			t.Errorf("%s for a child holding only tickets.read: %d %s", tool, r.Status, r.Body)
		}
	}
	// Nor can a child ask for a sensitive tool its parent does not hold.
	r = g.exchangeTools(narrow, e.identity("agent-d"), "tickets.read kb.delete")
	if r.Status != http.StatusForbidden || !strings.Contains(string(r.Body), "kb.delete") {
		t.Errorf("delegating a sensitive tool the parent lacks: %d %s", r.Status, r.Body)
	}
	// The verifier: the full child's action token, presented with the
	// narrow child's task token, names a tool that token does not grant.
	tok := g.session().actionToken("kb.delete", `{"doc":"7"}`)
	req := httptest.NewRequest(http.MethodDelete, "https://tools.example.com/docs/7", nil)
	req.Header.Set("Authorization", "Bearer "+narrow)
	req.Header.Set("Valet-Action", tok)
	_, v, _ := newToolServer(t, e, false)
	if _, err := v.CheckAction(context.Background(), req, "kb.delete", map[string]any{"doc": "7"}); err == nil || !strings.Contains(err.Error(), "not granted") {
		t.Fatalf("CheckAction for a tool the task token does not grant: %v", err)
	}
}

// TestDPoPBindingOnTaskRoutes guards issue 9 finding 8: a stolen
// DPoP-bound task token without its key read and completed the task (and
// so its delegation tree). Every route that takes a task token checks its
// binding.
func TestDPoPBindingOnTaskRoutes(t *testing.T) {
	e := newEnv(t, envOptions{templates: actionTemplates, agent: actionAgentConfig})
	key, thief := newDPoPSigner(t), newDPoPSigner(t)
	a := e.boundTask(key, "tickets.read")
	stolen := &agentSession{e: e, key: thief, taskID: a.taskID, token: a.token}
	for _, path := range []string{"/v1/tasks/" + a.taskID, "/v1/tasks/" + a.taskID + "/complete"} {
		method := http.MethodGet
		if strings.HasSuffix(path, "/complete") {
			method = http.MethodPost
		}
		for _, scheme := range []string{"Bearer", "DPoP"} {
			if r := e.do(method, path, "", "", nil, false); r.Status != http.StatusUnauthorized {
				t.Errorf("%s %s without a token: %d", method, path, r.Status)
			}
			req, _ := http.NewRequest(method, e.srv.URL+path, nil)
			req.Header.Set("Authorization", scheme+" "+a.token)
			if r := e.send(req); r.Status != http.StatusUnauthorized {
				t.Errorf("%s %s with the bound token as %s and no proof: %d %s", method, path, scheme, r.Status, r.Body)
			}
		}
		req, _ := http.NewRequest(method, e.srv.URL+path, nil)
		stolen.authorize(req, e.client)
		if r := e.send(req); r.Status != http.StatusUnauthorized {
			t.Errorf("%s %s with a proof by another key: %d %s", method, path, r.Status, r.Body)
		}
	}
	if in := e.introspect(a.token); in["active"] != true {
		t.Fatalf("the thief's attempts ended the task: %v", in)
	}
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/v1/tasks/"+a.taskID, nil)
	a.authorize(req, e.client)
	if r := e.send(req); r.Status != http.StatusOK {
		t.Fatalf("read with the key: %d %s", r.Status, r.Body)
	}
	req, _ = http.NewRequest(http.MethodPost, e.srv.URL+"/v1/tasks/"+a.taskID+"/complete", nil)
	a.authorize(req, e.client)
	if r := e.send(req); r.Status != http.StatusOK {
		t.Fatalf("complete with the key: %d %s", r.Status, r.Body)
	}
}
