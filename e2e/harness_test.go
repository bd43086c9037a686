package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/openapi"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/reconcile"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/toolevents"
)

const (
	clientID     = "tool-server"
	clientSecret = "a-long-enough-test-secret"
)

// testTemplates are the templates every end-to-end test runs with.
const testTemplates = `
templates:
  - name: triage
    description: Triage support tickets.
    principals:
      - issuer: test
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read, tickets.comment, "kb.*"]
    audiences: [https://tools.example.com]
    scopes: [tickets:read]
    conditions:
      - name: intent-stated
        expression: 'size(request.intent) >= 5'
      - name: no-export
        expression: '!("export" in request.context) || request.context.export == false'
`

// countingLedger counts the writes that reach the ledger.
type countingLedger struct {
	broker.Ledger
	writes atomic.Int64
}

func (l *countingLedger) Record(ctx context.Context, t broker.Task, c []broker.Credential) error {
	l.writes.Add(1)
	return l.Ledger.Record(ctx, t, c)
}

func (l *countingLedger) End(ctx context.Context, id string, s broker.State, reason string, at time.Time) (broker.Task, []broker.Credential, error) {
	l.writes.Add(1)
	return l.Ledger.End(ctx, id, s, reason, at)
}

// EndDue passes the reaper's batches through, counted as one write each.
func (l *countingLedger) EndDue(ctx context.Context, now time.Time, limit int, reason string) ([]broker.EndedTask, error) {
	l.writes.Add(1)
	return l.Ledger.EndDue(ctx, now, limit, reason)
}

// syncBuffer is an audit sink the test can read while the broker writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}
func (b *syncBuffer) String() string { b.mu.Lock(); defer b.mu.Unlock(); return b.buf.String() }

// env is one broker under test, with everything it talks to.
type env struct {
	t       *testing.T
	redis   *redistest.Server
	idp     *oidctest.Issuer
	ledger  *countingLedger
	raw     *revocation.RedisLedger
	clock   *testkit.Clock
	svc     *broker.Service
	srv     *testServer
	client  *http.Client
	audit   *syncBuffer
	tokens  *issuers.JWT
	stopped func()
	inc     incidentEnv // incident_harness_test.go
	// events are the tool-call events and rollback of the server.
	events *toolevents.Service
	// issuerNames are the agent issuers trusted (config names).
	issuerNames []string

	// The background repair loops the tests run by hand (retrier: nil
	// without a queue).
	reaper     *reconcile.Reaper
	retrier    *reconcile.Retrier
	reconciler *reconcile.Reconciler
}

type envOptions struct {
	redis *redistest.Server
	idp   *oidctest.Issuer
	key   issuers.SigningKey
	clock *testkit.Clock
	// auditor replaces the audit log (which writes to env.audit).
	auditor broker.Auditor
	// templates replaces testTemplates when set.
	templates string
	// incident wires the admin API, controls, epochs, the revocation feed,
	// the Redis audit stream, metrics and a captured log.
	incident bool
	// noAdminResume keeps the env's admin from resuming revocation jobs
	// (tests that play several brokers).
	noAdminResume bool
	// jobLease is the admin's revocation job lease (default 15s).
	jobLease time.Duration
	// rollbackHosts are the admin's rollback.allowed_hosts.
	rollbackHosts []string
	// feed limits the revocation stream's fan-out (zero: the defaults).
	feed fanout.Limits
	// agent, when set, adjusts the sensitive-action settings.
	agent func(*server.StepUpOptions)
	// issuers and queue extend the broker (Vault tests): further
	// issuers and a retry queue.
	issuers []broker.Issuer
	queue   broker.RevocationQueue
	// other, when set, is a second trusted agent issuer named "other".
	other *oidctest.Issuer
	// introspection admits identity tokens as introspection clients.
	introspection []clientauth.Rule
	// oauthClients are registered for client credentials (their
	// principals' issuer, oauth.ClientIssuer, joins the trusted names).
	oauthClients []oauth.Client
	// oauthInteractive turns on the authorization code grant (its
	// clients' principals are under oauth.ClientIssuer too).
	oauthInteractive *oauth.InteractiveConfig
	// people are further trusted issuers (of persons signing in), and
	// upstreamLogin the authorization endpoint's sign-in at one of them.
	people        []identity.IssuerConfig
	upstreamLogin *identity.LoginConfig
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, redis: o.redis, idp: o.idp, clock: o.clock, audit: &syncBuffer{}}
	if e.redis == nil {
		e.redis = redistest.Start(t, redistest.WithAOF())
	}
	if e.idp == nil {
		e.idp = oidctest.New(t)
	}
	if e.clock == nil {
		e.clock = testkit.NewClock(time.Now())
	}
	if o.key.Private == nil {
		k, err := issuers.GenerateSigningKey("EdDSA")
		if err != nil {
			t.Fatal(err)
		}
		o.key = issuers.SigningKey{Private: k}
	}
	rc, err := revocation.NewClient(e.redis.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rc.Close() })
	e.raw, err = revocation.NewRedisLedger(rc, revocation.RedisOptions{Prefix: "valet", Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.ledger = &countingLedger{Ledger: e.raw}
	_ = e.raw.Ping(context.Background()) // as `valet serve` does at start: read or start the ledger generation

	// The broker's public URL must be known before it is built: listen first.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.srv = &testServer{URL: "http://" + ln.Addr().String(), Listener: ln}
	e.tokens, err = issuers.NewJWT(issuers.JWTConfig{Issuer: e.srv.URL, Keys: []issuers.SigningKey{o.key}}, e.clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	trusted := []identity.IssuerConfig{{Name: "test", IssuerURL: e.idp.URL(), Audiences: []string{"valet"}}}
	names := []string{"test"}
	if o.other != nil {
		trusted = append(trusted, identity.IssuerConfig{Name: "other", IssuerURL: o.other.URL(), Audiences: []string{"valet"}})
		names = append(names, "other")
	}
	for _, p := range o.people {
		trusted, names = append(trusted, p), append(names, p.Name)
	}
	if len(o.oauthClients) > 0 || o.oauthInteractive != nil {
		names = append(names, oauth.ClientIssuer)
	}
	e.issuerNames = names
	verifier, err := identity.New(context.Background(), trusted, identity.Options{Now: e.clock.Now, SelfIssuer: e.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	tmplText := testTemplates
	if o.templates != "" {
		tmplText = o.templates
	}
	set, err := policy.Load([]policy.File{{Name: "test.yaml", Data: []byte(tmplText)}}, names)
	if err != nil {
		t.Fatal(err)
	}
	var auditor broker.Auditor = audit.NewLog(e.audit)
	if o.auditor != nil {
		auditor = o.auditor
	}
	stepUp := server.StepUpOptions{Actions: e.tokens}
	if o.agent != nil {
		o.agent(&stepUp)
	}
	opts := server.Options{
		PublicURL: e.srv.URL, Identity: verifier, Tokens: e.tokens, Ledger: e.ledger, Auditors: []broker.Auditor{auditor},
		Templates: set, Clients: []clientauth.Client{{ID: clientID, SecretSHA256: sha(clientSecret)}}, Now: e.clock.Now,
		Agent: broker.AgentConfig{Limiter: e.raw}, Records: e.raw, StepUp: stepUp, Issuers: o.issuers, Queue: o.queue, IntrospectionClients: o.introspection, MaxBodyBytes: 16 << 10,
		// The tests reap by hand (reaper.Once, reaper.Run), or play replicas
		// whose reaper never runs.
		ReapInterval: -1,
		OAuth:        &server.OAuthOptions{Clients: o.oauthClients, Interactive: o.oauthInteractive, UpstreamLogin: o.upstreamLogin},
	}
	if o.incident {
		e.incidentOptions(&opts, rc, o) // incident_harness_test.go
	}
	srv, err := server.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	e.svc, e.events, e.srv.Handler = srv.Service(), srv.ToolEvents(), srv.Handler()
	e.reaper, e.retrier, e.reconciler = srv.Reaper(), srv.Retrier(), srv.Reconciler()
	if o.incident {
		e.inc.admin, e.inc.metrics, e.inc.hub = srv.Admin(), srv.Metrics(), srv.FeedHub()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serving: %v", err)
		}
	})
	e.client = &http.Client{Transport: &validatingTransport{t: t, router: specRouter(t, e.srv.URL)}, Timeout: 10 * time.Second}
	// Run starts the background loops before it serves: once /healthz
	// answers, every one is running.
	resp, err := http.Get(e.srv.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return e
}

// testServer is where an env's broker serves.
type testServer struct {
	URL      string
	Listener net.Listener
	// Handler is the broker's whole HTTP surface (a chi router).
	Handler http.Handler
}

// identity returns an identity token for agent from the test issuer.
func (e *env) identity(agent string) string {
	return e.idp.Token(e.t, map[string]any{"sub": agent}, oidctest.WithNow(e.clock.Now()))
}

type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("answer is not JSON: %v: %s", err, r.Body)
	}
	return m
}

func (e *env) do(method, path, bearer, contentType string, body io.Reader, basic bool) response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if basic {
		req.SetBasicAuth(clientID, clientSecret)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// declare posts a declaration body with an identity token.
func (e *env) declare(identity, body string) response {
	e.t.Helper()
	return e.do(http.MethodPost, "/v1/tasks", identity, "application/json", strings.NewReader(body), false)
}

// declared declares a default task for agent and returns its id and token.
func (e *env) declared(agent string, ttlSeconds int) (taskID, taskToken string) {
	e.t.Helper()
	body := `{"template":"triage","intent":"triage ticket 4521","tools":["tickets.read","kb.search"],"ttl_seconds":` + itoa(ttlSeconds) + `}`
	r := e.declare(e.identity(agent), body)
	if r.Status != http.StatusCreated {
		e.t.Fatalf("declare: %d %s", r.Status, r.Body)
	}
	m := r.json(e.t)
	creds := m["credentials"].([]any)
	return m["task"].(map[string]any)["id"].(string), creds[0].(map[string]any)["access_token"].(string)
}

func (e *env) introspect(token string) map[string]any {
	e.t.Helper()
	r := e.do(http.MethodPost, "/v1/introspect", "", "application/x-www-form-urlencoded",
		strings.NewReader(url.Values{"token": {token}}.Encode()), true)
	if r.Status != http.StatusOK {
		e.t.Fatalf("introspect: %d %s", r.Status, r.Body)
	}
	return r.json(e.t)
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

// specRouter loads openapi.yaml for validating answers.
func specRouter(t *testing.T, serverURL string) routers.Router {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openapi.Spec)
	if err != nil {
		t.Fatalf("loading openapi.yaml: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not valid: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: serverURL}}
	r, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// validatingTransport checks every answer against openapi.yaml.
type validatingTransport struct {
	t      *testing.T
	router routers.Router
}

func (v *validatingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var reqBody []byte
	if req.Body != nil {
		reqBody, _ = io.ReadAll(req.Body)
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return resp, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	route, params, err := v.router.FindRoute(req)
	if err != nil {
		v.t.Errorf("%s %s is not in openapi.yaml: %v", req.Method, req.URL.Path, err)
		return resp, nil
	}
	req.Body = io.NopCloser(bytes.NewReader(reqBody))
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, IncludeResponseStatus: true}}
	if err := openapi3filter.ValidateResponse(req.Context(), &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(body)),
		Options: in.Options,
	}); err != nil {
		v.t.Errorf("%s %s answered %d, which openapi.yaml does not allow: %v\nbody: %s", req.Method, req.URL.Path, resp.StatusCode, err, body)
	}
	return resp, nil
}

func sha(s string) [32]byte { return sha256.Sum256([]byte(s)) }
