package e2e

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/openapi"
)

// TestLifecycle: declare, use, complete; the token dies at once.
func TestLifecycle(t *testing.T) {
	e := newEnv(t, envOptions{})
	id, tt := e.declared("agent-7", 120)

	in := e.introspect(tt)
	if in["active"] != true || in["task_id"] != id || in["sub"] != "agent-7" || in["scope"] != "tickets:read" {
		t.Fatalf("introspection of a live token: %v", in)
	}
	if tools := in["tools"].([]any); len(tools) != 2 || tools[0] != "tickets.read" || tools[1] != "kb.search" {
		t.Fatalf("tools = %v", tools)
	}

	r := e.do(http.MethodGet, "/v1/tasks/"+id, tt, "", nil, false)
	if r.Status != http.StatusOK || r.json(t)["task"].(map[string]any)["state"] != "active" {
		t.Fatalf("get task: %d %s", r.Status, r.Body)
	}
	// Another agent cannot see it.
	if r := e.do(http.MethodGet, "/v1/tasks/"+id, e.identity("agent-other"), "", nil, false); r.Status != http.StatusNotFound {
		t.Fatalf("another agent's view: %d %s", r.Status, r.Body)
	}

	r = e.do(http.MethodPost, "/v1/tasks/"+id+"/complete", tt, "", nil, false)
	if r.Status != http.StatusOK || r.json(t)["task"].(map[string]any)["state"] != "completed" {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	if in := e.introspect(tt); in["active"] != false || len(in) != 1 {
		t.Fatalf("introspection after complete: %v", in)
	}
	claims, err := e.tokens.Verify(tt)
	if err != nil {
		t.Fatal(err)
	}
	if _, denied, err := e.raw.Credential(context.Background(), claims.ID); err != nil || !denied {
		t.Fatalf("deny list after complete: denied=%v err=%v", denied, err)
	}
	// Completing again answers the same task; the identity token of its
	// agent may complete too.
	r = e.do(http.MethodPost, "/v1/tasks/"+id+"/complete", e.identity("agent-7"), "", nil, false)
	if r.Status != http.StatusOK {
		t.Fatalf("second complete: %d %s", r.Status, r.Body)
	}
	for _, typ := range []string{`"task.granted"`, `"task.completed"`} {
		if !strings.Contains(e.audit.String(), typ) {
			t.Errorf("audit trail lacks %s", typ)
		}
	}
	if strings.Contains(e.audit.String(), tt) {
		t.Fatal("the audit trail holds a whole task token")
	}
}

// TestRevokeRFC7009 revokes a task by its token.
func TestRevokeRFC7009(t *testing.T) {
	e := newEnv(t, envOptions{})
	id, tt := e.declared("agent-7", 120)
	form := "application/x-www-form-urlencoded"
	if r := e.do(http.MethodPost, "/v1/revoke", "", form, strings.NewReader("token="+tt), false); r.Status != http.StatusUnauthorized {
		t.Fatalf("revoke without client auth: %d", r.Status)
	}
	if r := e.do(http.MethodPost, "/v1/revoke", "", form, strings.NewReader("token="+tt), true); r.Status != http.StatusOK {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	if e.introspect(tt)["active"] != false {
		t.Fatal("revoked token is still active")
	}
	task, _, err := e.raw.Task(context.Background(), id)
	if err != nil || task.State != broker.StateRevoked {
		t.Fatalf("task after revoke: %+v %v", task, err)
	}
	// Revoking garbage answers 200, as RFC 7009 asks.
	if r := e.do(http.MethodPost, "/v1/revoke", "", form, strings.NewReader("token=garbage"), true); r.Status != http.StatusOK {
		t.Fatalf("revoke garbage: %d", r.Status)
	}
}

// TestReaper: a task never completed is ended by its deadline, also when
// the broker that declared it is gone and another one takes over.
func TestReaper(t *testing.T) {
	for _, restart := range []bool{false, true} {
		name := map[bool]string{false: "same broker", true: "after restart"}[restart]
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			id, tt := e.declared("agent-7", 60)
			claims, _ := e.tokens.Verify(tt)
			reaper := e
			if restart {
				// A new broker on the same Redis and the same keys, the
				// first one gone before the deadline.
				reaper = newEnv(t, envOptions{redis: e.redis, idp: e.idp, clock: e.clock})
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go reaper.reaper.Run(ctx, 50*time.Millisecond)

			e.clock.Advance(59 * time.Second)
			if task, _, _ := e.raw.Task(ctx, id); task.State != broker.StateActive {
				t.Fatalf("task ended before its deadline: %s", task.State)
			}
			e.clock.Advance(2 * time.Second)
			passed := time.Now()
			deadline := passed.Add(5 * time.Second)
			for {
				task, _, err := e.raw.Task(ctx, id)
				if err == nil && task.State == broker.StateExpired {
					t.Logf("reaper ended the task %v after its deadline passed", time.Since(passed))
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("reaper did not end the task within 5 s of its deadline: %+v %v", task, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if _, denied, err := e.raw.Credential(ctx, claims.ID); err != nil || !denied {
				t.Fatalf("expired task's token not denied: %v %v", denied, err)
			}
			if !strings.Contains(reaper.audit.String(), `"task.expired"`) {
				t.Error("no task.expired audit event")
			}
		})
	}
}

// TestHostileIdentityTokens: every hostile token gets 401, no ledger write
// and no outbound fetch.
func TestHostileIdentityTokens(t *testing.T) {
	e := newEnv(t, envOptions{})
	_, taskToken := e.declared("agent-7", 120)
	writesBefore := e.ledger.writes.Load()
	fetchesBefore := e.idp.JWKSFetches()
	cases, outbound := oidctest.HostileTokens(t, e.idp, taskToken)
	if len(cases) < 40 {
		t.Fatalf("only %d hostile tokens", len(cases))
	}
	body := `{"template":"triage","intent":"triage ticket 4521","tools":["tickets.read"]}`
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			if strings.ContainsAny(c.Token, "\r\n") {
				t.Skip("net/http will not send a header holding a line break; the broker's identity tests cover this token")
			}
			if strings.TrimSpace(c.Token) != c.Token {
				t.Skip("HTTP drops whitespace around a header value (RFC 9110 OWS), so this is a plain valid token on the wire; the broker's identity tests cover it")
			}
			if len(c.Token) > server.MaxHeaderBytes {
				// Larger than the header cap: net/http answers 431 itself,
				// before Valet (or its contract) sees the request.
				req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/tasks", strings.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+c.Token)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
					t.Fatalf("a %d-byte token answered %d, want 431", len(c.Token), resp.StatusCode)
				}
				return
			}
			r := e.declare(c.Token, body)
			if r.Status != http.StatusUnauthorized {
				t.Fatalf("answered %d: %s", r.Status, r.Body)
			}
			if r.json(t)["message"] != "unable to verify bearer token" {
				t.Fatalf("401 body reveals more than the fixed message: %s", r.Body)
			}
		})
	}
	if n := e.ledger.writes.Load() - writesBefore; n != 0 {
		t.Fatalf("%d ledger writes during hostile tokens", n)
	}
	if n := outbound(); n != 0 {
		t.Fatalf("%d outbound fetches of attacker URLs", n)
	}
	if n := e.idp.JWKSFetches() - fetchesBefore; n > 1 {
		t.Fatalf("%d JWKS fetches during hostile tokens, want at most 1", n)
	}
}

// TestBadInput: clear errors, nothing written.
func TestBadInput(t *testing.T) {
	e := newEnv(t, envOptions{})
	tok := e.identity("agent-7")
	ok := `"template":"triage","intent":"triage ticket 4521"`
	cases := []struct {
		name, contentType, body string
		status                  int
		field, rule             string
	}{
		{"malformed JSON", "application/json", `{"template":`, 400, "", ""},
		{"not an object", "application/json", `[1,2]`, 400, "", ""},
		{"two objects", "application/json", `{` + ok + `,"tools":["tickets.read"]}{}`, 400, "", ""},
		{"unknown field", "application/json", `{` + ok + `,"tools":["tickets.read"],"admin":true}`, 400, "admin", ""},
		{"missing template", "application/json", `{"intent":"triage ticket","tools":["tickets.read"]}`, 400, "template", ""},
		{"unknown template", "application/json", `{"template":"nope","intent":"triage ticket","tools":["tickets.read"]}`, 403, "template", "template"},
		{"missing intent", "application/json", `{"template":"triage","tools":["tickets.read"]}`, 400, "intent", ""},
		{"ttl zero", "application/json", `{` + ok + `,"tools":["tickets.read"],"ttl_seconds":0}`, 400, "ttl_seconds", ""},
		{"ttl negative", "application/json", `{` + ok + `,"tools":["tickets.read"],"ttl_seconds":-5}`, 400, "ttl_seconds", ""},
		{"ttl over template max", "application/json", `{` + ok + `,"tools":["tickets.read"],"ttl_seconds":3600}`, 400, "ttl_seconds", ""},
		{"ttl not a number", "application/json", `{` + ok + `,"tools":["tickets.read"],"ttl_seconds":"5m"}`, 400, "ttl_seconds", ""},
		{"empty tools", "application/json", `{` + ok + `,"tools":[]}`, 400, "tools", ""},
		{"empty tool name", "application/json", `{` + ok + `,"tools":["tickets.read",""]}`, 400, "tools[1]", ""},
		{"duplicate tools", "application/json", `{` + ok + `,"tools":["tickets.read","tickets.read"]}`, 400, "tools[1]", ""},
		{"tool name outside the grammar", "application/json", `{` + ok + `,"tools":["tickets.read","kb.search","tickets.comment","kb.se\u200barch"]}`, 400, "tools[3]", ""},
		{"tool outside allowlist", "application/json", `{` + ok + `,"tools":["tickets.read","tickets.delete"]}`, 403, "tools[1]", "tools"},
		{"prefix pattern is not a wildcard for its root", "application/json", `{` + ok + `,"tools":["kb"]}`, 403, "tools[0]", "tools"},
		{"condition denies", "application/json", `{` + ok + `,"tools":["tickets.read"],"context":{"export":true}}`, 403, "", "no-export"},
		{"context not an object", "application/json", `{` + ok + `,"tools":["tickets.read"],"context":[1]}`, 400, "context", ""},
		{"body over the cap", "application/json", `{` + ok + `,"tools":["tickets.read"],"context":{"pad":"` + strings.Repeat("x", 20<<10) + `"}}`, 413, "", ""},
		{"wrong content type", "text/plain", `{` + ok + `,"tools":["tickets.read"]}`, 415, "", ""},
		{"no content type", "", `{` + ok + `,"tools":["tickets.read"]}`, 415, "", ""},
	}
	before := e.ledger.writes.Load()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.do(http.MethodPost, "/v1/tasks", tok, c.contentType, strings.NewReader(c.body), false)
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Body)
			}
			m := r.json(t)
			if m["message"] == "" || m["error"] == "" {
				t.Fatalf("error body lacks error/message: %s", r.Body)
			}
			if c.field != "" && m["field"] != c.field {
				t.Fatalf("field = %v, want %s (%s)", m["field"], c.field, r.Body)
			}
			if c.rule != "" && m["rule"] != c.rule {
				t.Fatalf("rule = %v, want %s (%s)", m["rule"], c.rule, r.Body)
			}
		})
	}
	if n := e.ledger.writes.Load() - before; n != 0 {
		t.Fatalf("%d ledger writes for bad input", n)
	}
	if !strings.Contains(e.audit.String(), `"rule":"no-export"`) {
		t.Error("the denial by rule no-export is not audited")
	}
}

// TestRedisDown: declarations answer 503 fast, nothing is issued, service
// resumes when Redis is back.
func TestRedisDown(t *testing.T) {
	e := newEnv(t, envOptions{})
	_, tt := e.declared("agent-7", 120)
	tok := e.identity("agent-7")
	body := `{"template":"triage","intent":"triage ticket 4521","tools":["tickets.read"]}`

	e.redis.Kill()
	var slowest time.Duration
	for i := range 5 {
		start := time.Now()
		r := e.declare(tok, body)
		took := time.Since(start)
		if r.Status != http.StatusServiceUnavailable {
			t.Fatalf("declare %d with Redis down: %d %s", i, r.Status, r.Body)
		}
		if strings.Contains(string(r.Body), "access_token") {
			t.Fatal("a 503 carried a credential")
		}
		if took > 2*time.Second {
			t.Fatalf("declare with Redis down took %s, want under 2 s", took)
		}
		slowest = max(slowest, took)
	}
	t.Logf("with Redis killed, 5 declarations answered 503 in at most %v", slowest)
	// Introspection fails closed: an error, never "active".
	r := e.do(http.MethodPost, "/v1/introspect", "", "application/x-www-form-urlencoded", strings.NewReader("token="+tt), true)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("introspect with Redis down: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodGet, "/readyz", "", "", nil, false); r.Status != http.StatusServiceUnavailable {
		t.Fatalf("readyz with Redis down: %d", r.Status)
	}

	e.redis.Restart()
	restarted := time.Now()
	deadline := restarted.Add(10 * time.Second)
	for {
		r := e.declare(tok, body)
		if r.Status == http.StatusCreated {
			t.Logf("declarations resumed %v after Redis restarted", time.Since(restarted))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("declarations did not resume after Redis came back: %d %s", r.Status, r.Body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Every task the ledger knows had its grant audited, and every granted
	// credential is in the ledger: nothing was issued untracked.
	for _, line := range strings.Split(strings.TrimSpace(e.audit.String()), "\n") {
		if !strings.Contains(line, `"task.granted"`) {
			continue
		}
		i := strings.Index(line, `"task_id":"`)
		id := line[i+len(`"task_id":"`):]
		id = id[:strings.IndexByte(id, '"')]
		if _, _, err := e.raw.Task(context.Background(), id); err != nil && !errors.Is(err, broker.ErrNotFound) {
			t.Fatalf("task %s: %v", id, err)
		} else if err != nil {
			t.Fatalf("granted task %s is not in the ledger", id)
		}
	}
}

// TestRoutesInSpec: every chi route is described in openapi.yaml.
func TestRoutesInSpec(t *testing.T) {
	e := newEnv(t, envOptions{})
	doc, err := openapi3.NewLoader().LoadFromData(openapi.Spec)
	if err != nil {
		t.Fatal(err)
	}
	h := e.srv.Handler.(chi.Routes)
	n := 0
	err = chi.Walk(h, func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		n++
		item := doc.Paths.Find(route)
		if item == nil || item.GetOperation(method) == nil {
			t.Errorf("route %s %s is not in openapi.yaml", method, route)
		}
		return nil
	})
	if err != nil || n < 10 {
		t.Fatalf("walked %d routes: %v", n, err)
	}
	for _, path := range []string{"/healthz", "/readyz", "/openapi.yaml", "/.well-known/jwks.json", "/.well-known/oauth-authorization-server"} {
		if r := e.do(http.MethodGet, path, "", "", nil, false); r.Status != http.StatusOK {
			t.Errorf("GET %s: %d", path, r.Status)
		}
	}
}
