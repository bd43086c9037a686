package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/openapi"
)

func (e *env) adminDo(method, path, token, body string) response {
	e.t.Helper()
	var rd io.Reader
	ct := ""
	if body != "" {
		rd, ct = strings.NewReader(body), "application/json"
	}
	return e.do(method, path, token, ct, rd, false)
}

// auditLines returns the audit events (file sink) of type typ.
func (e *env) auditEvents(typ string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(e.audit.String()), "\n") {
		var rec struct {
			Event map[string]any `json:"event"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Event["type"] == typ {
			out = append(out, rec.Event)
		}
	}
	return out
}

// TestIncidentRoutesInSpec: with the incident side on, every route is in
// openapi.yaml too.
func TestIncidentRoutesInSpec(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	doc, err := openapi3.NewLoader().LoadFromData(openapi.Spec)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = chi.Walk(e.srv.Handler.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		n++
		if item := doc.Paths.Find(route); item == nil || item.GetOperation(method) == nil {
			t.Errorf("route %s %s is not in openapi.yaml", method, route)
		}
		return nil
	})
	if err != nil || n < 20 {
		t.Fatalf("walked %d routes: %v", n, err)
	}
}

// TestAdminAuthorization: agent tokens never pass; roles gate actions;
// every attempt is audited with who made it.
func TestAdminAuthorization(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	body := `{"selector":{"agent":"agent-x"},"reason":"test"}`
	cases := []struct {
		name   string
		token  string
		status int
		actor  string
	}{
		{"no token", "", http.StatusUnauthorized, "unknown"},
		{"agent identity token", e.identity("agent-7"), http.StatusUnauthorized, "unknown"},
		{"agent identity token with admin groups", e.idp.Token(t, map[string]any{"sub": "agent-7", "groups": []string{"valet-admins"}}, oidctest.WithNow(e.clock.Now())), http.StatusUnauthorized, "unknown"},
		{"admin token without a role", e.adminToken("mallory", "staff"), http.StatusForbidden, "admin:corp/mallory"},
		{"viewer", e.adminToken("vera", "valet-viewers"), http.StatusForbidden, "admin:corp/vera"},
		{"responder", e.adminToken("rita", "valet-responders"), http.StatusOK, "admin:corp/rita"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(e.auditEvents("admin.revoke"))
			r := e.adminDo(http.MethodPost, "/v1/admin/revocations", c.token, body)
			if r.Status != c.status {
				t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Body)
			}
			evs := e.auditEvents("admin.revoke")
			if len(evs) != before+1 {
				t.Fatalf("%d admin.revoke audit events, want %d", len(evs), before+1)
			}
			last := evs[len(evs)-1]
			want := "denied"
			if c.status == http.StatusOK {
				want = "allowed"
			}
			if last["actor"] != c.actor || last["outcome"] != want {
				t.Fatalf("audit event %v, want actor %s outcome %s", last, c.actor, want)
			}
		})
	}
	// A viewer may read.
	if r := e.adminDo(http.MethodGet, "/v1/admin/controls", e.adminToken("vera", "valet-viewers"), ""); r.Status != http.StatusOK {
		t.Fatalf("viewer reading controls: %d %s", r.Status, r.Body)
	}
}

// TestControls: freeze with revoke kills live tasks and refuses new ones
// with the rule; the control is listed, survives a broker restart and can
// be lifted; quarantine and distrust refuse too.
func TestControls(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	rita := e.adminToken("rita", "valet-responders")
	_, tt := e.declared("agent-7", 120)
	_, other := e.declared("agent-8", 120)

	r := e.adminDo(http.MethodPost, "/v1/admin/controls", rita, `{"kind":"freeze_agent","target":"agent-7","reason":"leaked key","revoke":true}`)
	if r.Status != http.StatusCreated {
		t.Fatalf("freeze: %d %s", r.Status, r.Body)
	}
	if in := e.introspect(tt); in["active"] != false {
		t.Fatalf("frozen agent's live token: %v", in)
	}
	if in := e.introspect(other); in["active"] != true {
		t.Fatalf("another agent's token: %v", in)
	}
	deny := func(env *env, agent, rule string) {
		t.Helper()
		r := env.declare(env.identity(agent), `{"template":"triage","intent":"triage ticket 1","tools":["tickets.read"]}`)
		if r.Status != http.StatusForbidden || r.json(t)["rule"] != rule {
			t.Fatalf("declare by %s: %d %s, want 403 rule %s", agent, r.Status, r.Body, rule)
		}
	}
	deny(e, "agent-7", "frozen-agent")

	// Another broker on the same Redis (a restart, or a replica) agrees.
	e2 := newEnv(t, envOptions{incident: true, redis: e.redis, idp: e.idp, clock: e.clock})
	deny(e2, "agent-7", "frozen-agent")
	r = e2.adminDo(http.MethodGet, "/v1/admin/controls", e2.adminToken("vera", "valet-viewers"), "")
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"target":"agent-7"`) || !strings.Contains(string(r.Body), `"by":"admin:corp/rita"`) {
		t.Fatalf("controls on the second broker: %d %s", r.Status, r.Body)
	}

	// Lifting on one broker reaches the other within a second.
	r = e2.adminDo(http.MethodDelete, "/v1/admin/controls?kind=freeze_agent&target=agent-7", e2.adminToken("rita", "valet-responders"), "")
	if r.Status != http.StatusOK {
		t.Fatalf("unfreeze: %d %s", r.Status, r.Body)
	}
	deadline := time.Now().Add(time.Second)
	for {
		r := e.declare(e.identity("agent-7"), `{"template":"triage","intent":"triage ticket 1","tools":["tickets.read"]}`)
		if r.Status == http.StatusCreated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unfreeze not seen by the first broker within 1s: %d %s", r.Status, r.Body)
		}
		time.Sleep(10 * time.Millisecond)
	}

	for _, c := range []struct{ body, rule string }{
		{`{"kind":"quarantine_template","target":"triage","reason":"bad prompt"}`, "quarantined-template"},
		{`{"kind":"distrust_issuer","target":"test"}`, "distrusted-issuer"},
	} {
		if r := e.adminDo(http.MethodPost, "/v1/admin/controls", rita, c.body); r.Status != http.StatusCreated {
			t.Fatalf("control %s: %d %s", c.body, r.Status, r.Body)
		}
		deny(e, "agent-9", c.rule)
		var ctl map[string]any
		_ = json.Unmarshal([]byte(c.body), &ctl)
		q := url.Values{"kind": {ctl["kind"].(string)}, "target": {ctl["target"].(string)}}
		if r := e.adminDo(http.MethodDelete, "/v1/admin/controls?"+q.Encode(), rita, ""); r.Status != http.StatusOK {
			t.Fatalf("lift: %d %s", r.Status, r.Body)
		}
	}
	if evs := e.auditEvents("control.set"); len(evs) != 3 {
		t.Fatalf("%d control.set audit events, want 3", len(evs))
	}
}

// TestControlsFailClosed: when Redis is gone, declarations answer 503.
func TestControlsFailClosed(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	e.redis.Kill()
	e.inc.controls.Reload(context.Background())
	r := e.declare(e.identity("agent-7"), `{"template":"triage","intent":"triage ticket 1","tools":["tickets.read"]}`)
	if r.Status != http.StatusServiceUnavailable {
		t.Fatalf("declare with the control store down: %d %s", r.Status, r.Body)
	}
}

// TestBulkRevokeSmall: dry run, run, rerun, tasks list and timeline over
// HTTP.
func TestBulkRevokeSmall(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	rita := e.adminToken("rita", "valet-responders")
	var hot, cold []string
	var hotTask string
	for i := 0; i < 3; i++ {
		id, tt := e.declared("agent-hot", 120)
		hot, hotTask = append(hot, tt), id
		_, tt = e.declared("agent-cold", 120)
		cold = append(cold, tt)
	}
	r := e.adminDo(http.MethodPost, "/v1/admin/revocations", rita, `{"selector":{"agent":"agent-hot"},"dry_run":true}`)
	if m := r.json(t); r.Status != http.StatusOK || m["tasks_matched"] != 3.0 || len(m["sample"].([]any)) != 3 {
		t.Fatalf("dry run: %d %s", r.Status, r.Body)
	}
	if in := e.introspect(hot[0]); in["active"] != true {
		t.Fatal("a dry run revoked something")
	}
	r = e.adminDo(http.MethodPost, "/v1/admin/revocations", rita, `{"selector":{"agent":"agent-hot"},"reason":"incident 12"}`)
	job := r.json(t)["job"].(map[string]any)
	if r.Status != http.StatusOK || job["state"] != "done" || job["revoked"] != 3.0 || job["tasks_matched"] != 3.0 || job["pending"] != 0.0 {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	for _, tt := range hot {
		if in := e.introspect(tt); in["active"] != false {
			t.Fatalf("hot token still active: %v", in)
		}
	}
	for _, tt := range cold {
		if in := e.introspect(tt); in["active"] != true {
			t.Fatalf("control token touched: %v", in)
		}
	}
	writes := e.ledger.writes.Load()
	r = e.adminDo(http.MethodPost, "/v1/admin/revocations", rita, `{"selector":{"agent":"agent-hot"},"reason":"incident 12 again"}`)
	if job := r.json(t)["job"].(map[string]any); job["matched"] != 0.0 || job["revoked"] != 0.0 || e.ledger.writes.Load() != writes {
		t.Fatalf("rerun changed something: %s (ledger writes %d → %d)", r.Body, writes, e.ledger.writes.Load())
	}
	vera := e.adminToken("vera", "valet-viewers")
	r = e.adminDo(http.MethodGet, "/v1/admin/revocations/"+job["id"].(string), vera, "")
	if r.Status != http.StatusOK {
		t.Fatalf("job: %d %s", r.Status, r.Body)
	}
	r = e.adminDo(http.MethodGet, "/v1/admin/tasks?agent=agent-hot&state=revoked", vera, "")
	if ts := r.json(t)["tasks"].([]any); r.Status != http.StatusOK || len(ts) != 3 {
		t.Fatalf("tasks: %d %s", r.Status, r.Body)
	}
	r = e.adminDo(http.MethodGet, "/v1/admin/tasks?agent=agent-cold&state=active", vera, "")
	if ts := r.json(t)["tasks"].([]any); len(ts) != 3 {
		t.Fatalf("active tasks of agent-cold: %s", r.Body)
	}
	r = e.adminDo(http.MethodGet, "/v1/admin/tasks/"+hotTask+"/timeline", vera, "")
	var tl struct {
		Events []struct{ Type, Actor, Reason string } `json:"events"`
	}
	_ = json.Unmarshal(r.Body, &tl)
	if r.Status != http.StatusOK || len(tl.Events) != 2 || tl.Events[0].Type != "task.granted" || tl.Events[1].Type != "task.revoked" ||
		tl.Events[1].Actor != "admin:corp/rita" {
		t.Fatalf("timeline: %d %s", r.Status, r.Body)
	}
	if r := e.adminDo(http.MethodGet, "/v1/admin/tasks/"+hotTask, vera, ""); r.Status != http.StatusOK {
		t.Fatalf("task detail: %d %s", r.Status, r.Body)
	}
}

// sseEvent is one parsed Server-Sent Event.
type sseEvent struct{ id, event, data string }

// follow opens the revocation stream of env and sends its events.
func (e *env) follow(ctx context.Context, cursor string) <-chan sseEvent {
	e.t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/v1/revocations/stream?cursor="+url.QueryEscape(cursor), nil)
	req.SetBasicAuth(clientID, clientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		e.t.Fatalf("stream: %d %s", resp.StatusCode, b)
	}
	out := make(chan sseEvent, 1024)
	go func() {
		defer resp.Body.Close()
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.event != "" {
					out <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return out
}

// TestFeedAcrossReplicas: a revocation on replica 1 reaches replica 2's
// stream within a second; the snapshot lists it; a cursor resumes.
func TestFeedAcrossReplicas(t *testing.T) {
	r1 := newEnv(t, envOptions{incident: true})
	r2 := newEnv(t, envOptions{incident: true, redis: r1.redis, idp: r1.idp, clock: r1.clock})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	snap := r2.do(http.MethodGet, "/v1/revocations", "", "", nil, true)
	cursor := snap.json(t)["cursor"].(string)
	events := r2.follow(ctx, cursor)

	id, tt := r1.declared("agent-7", 120)
	claims, _ := r1.tokens.Verify(tt)
	start := time.Now()
	rv := r1.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+url.QueryEscape(tt)), true)
	if rv.Status != http.StatusOK {
		t.Fatalf("revoke: %d %s", rv.Status, rv.Body)
	}
	var got sseEvent
	select {
	case got = <-events:
	case <-time.After(time.Second):
		t.Fatal("revocation on replica 1 not seen on replica 2's stream within 1s")
	}
	lag := time.Since(start)
	var d struct {
		JTI    string `json:"jti"`
		TaskID string `json:"task_id"`
		Exp    int64  `json:"exp"`
	}
	if err := json.Unmarshal([]byte(got.data), &d); err != nil || got.event != "revoked" || d.JTI != claims.ID || d.TaskID != id || d.Exp != claims.ExpiresAt.Unix() {
		t.Fatalf("event %+v", got)
	}
	t.Logf("replica 1 → replica 2 stream: %v", lag)

	// An epoch (bulk revoke) is on the stream too.
	r1.adminDo(http.MethodPost, "/v1/admin/revocations", r1.adminToken("rita", "valet-responders"), `{"selector":{"template":"triage"}}`)
	select {
	case ep := <-events:
		if ep.event != "epoch" || !strings.Contains(ep.data, `"dimension":"template","key":"triage"`) {
			t.Fatalf("epoch event %+v", ep)
		}
	case <-time.After(time.Second):
		t.Fatal("epoch not seen within 1s")
	}

	snap = r2.do(http.MethodGet, "/v1/revocations", "", "", nil, true)
	if !strings.Contains(string(snap.Body), claims.ID) || !strings.Contains(string(snap.Body), `"key":"triage"`) {
		t.Fatalf("snapshot: %s", snap.Body)
	}
	// Resuming from the first event's id skips it.
	resumed := r2.follow(ctx, got.id)
	select {
	case ev := <-resumed:
		if ev.event != "epoch" {
			t.Fatalf("resumed stream starts with %+v", ev)
		}
	case <-time.After(time.Second):
		t.Fatal("resumed stream is silent")
	}
	// Unauthenticated readers are refused.
	if r := r2.do(http.MethodGet, "/v1/revocations", "", "", nil, false); r.Status != http.StatusUnauthorized {
		t.Fatalf("anonymous snapshot: %d", r.Status)
	}
	if r := r2.do(http.MethodGet, "/v1/revocations/stream?cursor=bogus", "", "", nil, true); r.Status != http.StatusBadRequest {
		t.Fatalf("bad cursor: %d %s", r.Status, r.Body)
	}
}
