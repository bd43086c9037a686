package oauth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/delegation"
	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

const templates = `
templates:
  - name: triage
    principals:
      - issuer: test
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read, tickets.comment, "kb.*"]
    audiences: [https://tools.example.com, https://kb.example.com]
    conditions:
      - name: no-export
        expression: '!("export" in request.context) || request.context.export == false'
  - name: billing
    principals:
      - issuer: clients
    ttl: {default: 2m, max: 10m}
    tools: [invoices.read]
    audiences: [https://billing.example.com]
  - name: other
    principals:
      - issuer: clients
    ttl: {default: 2m, max: 10m}
    tools: [other.read]
    audiences: [https://other.example.com]
`

// countingLedger counts the writes that reach the ledger.
type countingLedger struct {
	*revocation.MemoryLedger
	writes atomic.Int64
}

func (l *countingLedger) Record(ctx context.Context, t broker.Task, c []broker.Credential) error {
	l.writes.Add(1)
	return l.MemoryLedger.Record(ctx, t, c)
}

func (l *countingLedger) End(ctx context.Context, id string, s broker.State, reason string, at time.Time) (broker.Task, []broker.Credential, error) {
	l.writes.Add(1)
	return l.MemoryLedger.End(ctx, id, s, reason, at)
}

// downLimiter is a replay store that cannot be reached.
type downLimiter struct{}

func (downLimiter) Once(context.Context, string, time.Time) (bool, error) {
	return false, broker.ErrUnavailable
}
func (downLimiter) Count(context.Context, string, time.Time) (int64, error) {
	return 0, broker.ErrUnavailable
}

type fixture struct {
	t      *testing.T
	idp    *oidctest.Issuer
	ledger *countingLedger
	srv    *httptest.Server
	key    ed25519.PrivateKey
	now    time.Time
	tokens *issuers.JWT
}

const issuerURL = "https://valet.example.com"

func newFixture(t *testing.T, once broker.Limiter) *fixture {
	t.Helper()
	return newFixtureWith(t, once, nil)
}

// newFixtureWith lets a test change the endpoint's Config.
func newFixtureWith(t *testing.T, once broker.Limiter, change func(*oauth.Config)) *fixture {
	t.Helper()
	f := &fixture{t: t, idp: oidctest.New(t), now: time.Now()}
	now := func() time.Time { return f.now }
	ctx := context.Background()
	verifier, err := identity.New(ctx, []identity.IssuerConfig{{Name: "test", IssuerURL: f.idp.URL(), Audiences: []string{"valet"}}},
		identity.Options{Now: now, SelfIssuer: issuerURL})
	if err != nil {
		t.Fatal(err)
	}
	k, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	if f.tokens, err = issuers.NewJWT(issuers.JWTConfig{Issuer: issuerURL, Keys: []issuers.SigningKey{{Private: k}}}, now); err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(templates)}}, []string{"test", oauth.ClientIssuer})
	if err != nil {
		t.Fatal(err)
	}
	f.ledger = &countingLedger{MemoryLedger: revocation.NewMemoryLedger(now, time.Hour)}
	if once == nil {
		once = f.ledger.MemoryLedger
	}
	svc, err := broker.NewService(broker.Config{Identity: verifier, Tokens: f.tokens, Ledger: f.ledger,
		Auditor: audit.NewLog(io.Discard), Templates: set, Now: now, Agent: broker.AgentConfig{Limiter: once}})
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	f.key = priv
	cfg := oauth.Config{Service: svc, Identity: verifier, Once: once, Issuer: issuerURL, Now: now,
		Clients: []oauth.Client{{ID: "billing-agent", Templates: []string{"billing"},
			Keys: jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: pub, KeyID: "k1", Algorithm: "EdDSA"}}}}}}
	if change != nil {
		change(&cfg)
	}
	ep, err := oauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	exchange := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	f.srv = httptest.NewServer(ep.Handler(exchange))
	t.Cleanup(f.srv.Close)
	return f
}

// assertion is a workload identity token for agent, with a fresh jti.
func (f *fixture) assertion(claims map[string]any) string {
	c := map[string]any{"sub": "agent-7", "jti": broker.NewID("jti")}
	for k, v := range claims {
		c[k] = v
	}
	return f.idp.Token(f.t, c, oidctest.WithNow(f.now))
}

// clientAssertion is a private_key_jwt assertion of billing-agent.
func (f *fixture) clientAssertion(claims map[string]any, key ed25519.PrivateKey) string {
	c := jwt.MapClaims{"iss": "billing-agent", "sub": "billing-agent", "aud": issuerURL + "/v1/token",
		"iat": f.now.Unix(), "exp": f.now.Add(time.Minute).Unix(), "jti": broker.NewID("jti")}
	for k, v := range claims {
		if v == nil {
			delete(c, k)
			continue
		}
		c[k] = v
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	tok.Header["kid"] = "k1"
	if key == nil {
		key = f.key
	}
	s, err := tok.SignedString(key)
	if err != nil {
		f.t.Fatal(err)
	}
	return s
}

func (f *fixture) post(form url.Values, header ...string) (int, http.Header, map[string]any) {
	f.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.srv.URL+"/v1/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if resp.StatusCode != http.StatusTeapot {
		if err := json.Unmarshal(b, &m); err != nil {
			f.t.Fatalf("answer is not JSON: %s", b)
		}
	}
	return resp.StatusCode, resp.Header, m
}

func details(entries ...map[string]any) string {
	b, _ := json.Marshal(entries)
	return string(b)
}

func triage(extra map[string]any) map[string]any {
	d := map[string]any{"type": "valet_task", "template": "triage", "intent": "triage ticket 4521", "tools": []string{"tickets.read"}}
	for k, v := range extra {
		if v == nil {
			delete(d, k)
			continue
		}
		d[k] = v
	}
	return d
}

func TestJWTBearerGrant(t *testing.T) {
	f := newFixture(t, nil)
	form := url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {f.assertion(nil)},
		"authorization_details": {details(triage(map[string]any{"ttl": 120}))}, "resource": {"https://kb.example.com"}}
	status, h, body := f.post(form)
	if status != http.StatusOK {
		t.Fatalf("status %d: %v", status, body)
	}
	if h.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control = %q", h.Get("Cache-Control"))
	}
	if body["token_type"] != "Bearer" || body["expires_in"] != float64(120) || body["scope"] != "template:triage tickets.read" {
		t.Errorf("answer %v", body)
	}
	taskID, _ := body["task_id"].(string)
	if !strings.HasPrefix(taskID, "tsk") {
		t.Errorf("task_id %q", taskID)
	}
	ad, _ := body["authorization_details"].([]any)
	if len(ad) != 1 || ad[0].(map[string]any)["template"] != "triage" || ad[0].(map[string]any)["ttl"] != float64(120) {
		t.Errorf("authorization_details %v", body["authorization_details"])
	}
	claims, err := f.tokens.Verify(body["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if len(claims.Audience) != 1 || claims.Audience[0] != "https://kb.example.com" || claims.TaskID != taskID || claims.Subject != "agent-7" {
		t.Errorf("token claims %+v", claims)
	}
	if got := f.ledger.writes.Load(); got != 1 {
		t.Errorf("%d ledger writes, want 1", got)
	}
	// The same assertion again is a replay.
	status, _, body = f.post(form)
	if status != http.StatusBadRequest || body["error"] != "invalid_grant" {
		t.Errorf("replay: %d %v", status, body)
	}
	// By scope, without resource: every audience of the template.
	status, _, body = f.post(url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {f.assertion(nil)},
		"scope": {"template:triage kb.search tickets.read"}})
	if status != http.StatusOK || body["scope"] != "template:triage kb.search tickets.read" {
		t.Fatalf("scope: %d %v", status, body)
	}
	claims, _ = f.tokens.Verify(body["access_token"].(string))
	if len(claims.Audience) != 2 {
		t.Errorf("audiences %v, want the template's two", claims.Audience)
	}
	// Neither: the assertion's scope claim, as golang.org/x/oauth2/jwt sends it.
	status, _, body = f.post(url.Values{"grant_type": {oauth.GrantJWTBearer},
		"assertion": {f.assertion(map[string]any{"scope": "template:triage kb.search"})}})
	if status != http.StatusOK || body["scope"] != "template:triage kb.search" {
		t.Fatalf("scope claim: %d %v", status, body)
	}
	status, _, body = f.post(url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {f.assertion(nil)}})
	if status != http.StatusBadRequest || body["error"] != "invalid_scope" {
		t.Errorf("no task anywhere: %d %v", status, body)
	}
}

// TestDPoPBoundGrant: a token request with a DPoP proof gets a token bound
// to its key (RFC 9449 section 5), token_type DPoP.
func TestDPoPBoundGrant(t *testing.T) {
	f := newFixture(t, nil)
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := dpop.NewSigner(key, jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := signer.Proof(http.MethodPost, issuerURL+"/v1/token", f.now, "")
	if err != nil {
		t.Fatal(err)
	}
	status, _, body := f.post(url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {f.assertion(nil)},
		"scope": {"template:triage tickets.read"}}, "DPoP", proof)
	if status != http.StatusOK || body["token_type"] != "DPoP" {
		t.Fatalf("%d %v", status, body)
	}
	claims, err := f.tokens.Verify(body["access_token"].(string))
	if err != nil || claims.JKT != signer.JKT() {
		t.Errorf("cnf.jkt %q, want %q (%v)", claims.JKT, signer.JKT(), err)
	}
	// The proof is single-use too.
	status, _, body = f.post(url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {f.assertion(nil)},
		"scope": {"template:triage tickets.read"}}, "DPoP", proof)
	if status != http.StatusBadRequest || body["error"] != "invalid_dpop_proof" {
		t.Errorf("replayed proof: %d %v", status, body)
	}
}

func TestClientCredentialsGrant(t *testing.T) {
	f := newFixture(t, nil)
	form := url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {oauth.ClientAssertionType},
		"client_assertion": {f.clientAssertion(nil, nil)}, "scope": {"template:billing invoices.read"}, "client_id": {"billing-agent"}}
	status, _, body := f.post(form)
	if status != http.StatusOK {
		t.Fatalf("status %d: %v", status, body)
	}
	claims, err := f.tokens.Verify(body["access_token"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if claims.Subject != "billing-agent" || claims.AgentIssuer != oauth.ClientIssuer || claims.Template != "billing" {
		t.Errorf("claims %+v", claims)
	}
	status, _, body = f.post(form)
	if status != http.StatusUnauthorized || body["error"] != "invalid_client" {
		t.Errorf("replayed client assertion: %d %v", status, body)
	}
}

func TestExchangeIsHandedOn(t *testing.T) {
	f := newFixture(t, nil)
	for _, form := range []url.Values{{"grant_type": {delegation.GrantTypeTokenExchange}}, {"subject_token": {"x"}}} {
		if status, _, _ := f.post(form); status != http.StatusTeapot {
			t.Errorf("%v went to %d, not the exchange", form, status)
		}
	}
}

func TestReplayStoreDown(t *testing.T) {
	f := newFixture(t, downLimiter{})
	status, h, body := f.post(url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {f.assertion(nil)},
		"scope": {"template:triage tickets.read"}})
	if status != http.StatusServiceUnavailable || body["error"] != "temporarily_unavailable" || h.Get("Retry-After") == "" {
		t.Errorf("%d %v", status, body)
	}
	if n := f.ledger.writes.Load(); n != 0 {
		t.Errorf("%d ledger writes", n)
	}
}

// TestTokenRefusals: every refusal is an RFC 6749 section 5.2 answer and
// writes nothing to the ledger.
func TestTokenRefusals(t *testing.T) {
	f := newFixture(t, nil)
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	jb := func(assertion string, kv ...string) url.Values {
		v := url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {assertion}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v
	}
	cc := func(assertion string, kv ...string) url.Values {
		v := url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {oauth.ClientAssertionType}, "client_assertion": {assertion}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v
	}
	ok := details(triage(nil))
	used := f.assertion(nil)
	if status, _, body := f.post(jb(used, "authorization_details", ok)); status != http.StatusOK {
		t.Fatalf("setup: %d %v", status, body)
	}
	usedClient := f.clientAssertion(nil, nil)
	if status, _, body := f.post(cc(usedClient, "scope", "template:billing invoices.read")); status != http.StatusOK {
		t.Fatalf("setup: %d %v", status, body)
	}
	before := f.ledger.writes.Load()
	billing := "template:billing invoices.read"
	cases := []struct {
		name   string
		form   url.Values
		header []string
		status int
		code   string
	}{
		{"unknown grant type", url.Values{"grant_type": {"password"}}, nil, 400, "unsupported_grant_type"},
		{"authorization code (not served)", url.Values{"grant_type": {"authorization_code"}, "code": {"x"}}, nil, 400, "unsupported_grant_type"},
		{"grant type twice", url.Values{"grant_type": {oauth.GrantJWTBearer, oauth.GrantJWTBearer}}, nil, 400, "invalid_request"},
		{"no assertion", jb("", "authorization_details", ok), nil, 400, "invalid_request"},
		{"assertion twice", func() url.Values {
			v := jb(f.assertion(nil), "authorization_details", ok)
			v.Add("assertion", "x")
			return v
		}(), nil, 400, "invalid_request"},
		{"huge assertion", jb(strings.Repeat("a", 17<<10), "authorization_details", ok), nil, 400, "invalid_request"},
		{"jwt-bearer with client assertion", jb(f.assertion(nil), "authorization_details", ok, "client_assertion", "x"), nil, 400, "invalid_request"},
		{"garbage assertion", jb("not.a.jwt", "authorization_details", ok), nil, 400, "invalid_grant"},
		{"replayed assertion", jb(used, "authorization_details", ok), nil, 400, "invalid_grant"},
		{"assertion for another audience", jb(f.assertion(map[string]any{"aud": "someone-else"}), "authorization_details", ok), nil, 400, "invalid_grant"},
		{"expired assertion", jb(f.assertion(map[string]any{"exp": f.now.Add(-time.Hour).Unix(), "iat": f.now.Add(-2 * time.Hour).Unix()}), "authorization_details", ok), nil, 400, "invalid_grant"},
		{"assertion expiring beyond the maximum", jb(f.assertion(map[string]any{"exp": f.now.Add(oauth.MaxBearerAssertionLife + time.Hour).Unix()}), "authorization_details", ok), nil, 400, "invalid_grant"},
		{"assertion from an untrusted issuer", jb(oidctest.New(t).Token(t, map[string]any{"sub": "agent-7"}), "authorization_details", ok), nil, 400, "invalid_grant"},
		{"no task", jb(f.assertion(nil)), nil, 400, "invalid_scope"},
		{"both details and scope", jb(f.assertion(nil), "authorization_details", ok, "scope", "template:triage tickets.read"), nil, 400, "invalid_request"},
		{"details not JSON", jb(f.assertion(nil), "authorization_details", "{"), nil, 400, "invalid_authorization_details"},
		{"details empty array", jb(f.assertion(nil), "authorization_details", "[]"), nil, 400, "invalid_authorization_details"},
		{"details wrong type", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"type": "payment_initiation"}))), nil, 400, "invalid_authorization_details"},
		{"details two entries", jb(f.assertion(nil), "authorization_details", details(triage(nil), triage(nil))), nil, 400, "invalid_authorization_details"},
		{"details unknown field", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"actions": []string{"x"}}))), nil, 400, "invalid_authorization_details"},
		{"details no template", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"template": nil}))), nil, 400, "invalid_authorization_details"},
		{"details no intent", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"intent": nil}))), nil, 400, "invalid_authorization_details"},
		{"details no tools", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"tools": []string{}}))), nil, 400, "invalid_authorization_details"},
		{"details bad tool name", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"tools": []string{"tickets read"}}))), nil, 400, "invalid_authorization_details"},
		{"details negative ttl", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"ttl": -1}))), nil, 400, "invalid_authorization_details"},
		{"details ttl over the template's max", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"ttl": 3600}))), nil, 400, "invalid_authorization_details"},
		{"details context not an object", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"context": []int{1}}))), nil, 400, "invalid_authorization_details"},
		{"tool outside the template", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"tools": []string{"payments.send"}}))), nil, 400, "invalid_authorization_details"},
		{"unknown template", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"template": "nope"}))), nil, 400, "invalid_authorization_details"},
		{"agent not admitted", jb(f.assertion(map[string]any{"sub": "robot-1"}), "authorization_details", ok), nil, 400, "invalid_authorization_details"},
		{"condition denies", jb(f.assertion(nil), "authorization_details", details(triage(map[string]any{"context": map[string]any{"export": true}}))), nil, 400, "invalid_grant"},
		{"intent not UTF-8", jb(f.assertion(nil), "scope", "template:triage tickets.read", "intent", "triage\xff"), nil, 400, "invalid_request"},
		{"scope without template", jb(f.assertion(nil), "scope", "tickets.read"), nil, 400, "invalid_scope"},
		{"scope with two templates", jb(f.assertion(nil), "scope", "template:triage template:billing tickets.read"), nil, 400, "invalid_scope"},
		{"scope tool outside the template", jb(f.assertion(nil), "scope", "template:triage payments.send"), nil, 400, "invalid_scope"},
		{"scope without tools", jb(f.assertion(nil), "scope", "template:triage"), nil, 400, "invalid_scope"},
		{"resource not allowed by the template", jb(f.assertion(nil), "authorization_details", ok, "resource", "https://evil.example.com"), nil, 400, "invalid_target"},
		{"resource relative", jb(f.assertion(nil), "authorization_details", ok, "resource", "/tools"), nil, 400, "invalid_target"},
		{"resource with fragment", jb(f.assertion(nil), "authorization_details", ok, "resource", "https://tools.example.com#x"), nil, 400, "invalid_target"},
		{"bad DPoP proof", jb(f.assertion(nil), "authorization_details", ok), []string{"DPoP", "not-a-proof"}, 400, "invalid_dpop_proof"},
		{"client secret", cc(f.clientAssertion(nil, nil), "scope", billing, "client_secret", "s"), nil, 401, "invalid_client"},
		{"wrong client assertion type", func() url.Values {
			v := cc(f.clientAssertion(nil, nil), "scope", billing)
			v.Set("client_assertion_type", "urn:other")
			return v
		}(), nil, 401, "invalid_client"},
		{"no client assertion", cc("", "scope", billing), nil, 401, "invalid_client"},
		{"client assertion by another key", cc(f.clientAssertion(nil, otherKey), "scope", billing), nil, 401, "invalid_client"},
		{"unregistered client", cc(f.clientAssertion(map[string]any{"iss": "mallory", "sub": "mallory"}, nil), "scope", billing), nil, 401, "invalid_client"},
		{"client sub is not iss", cc(f.clientAssertion(map[string]any{"sub": "someone"}, nil), "scope", billing), nil, 401, "invalid_client"},
		{"client assertion for another audience", cc(f.clientAssertion(map[string]any{"aud": "https://elsewhere.example.com"}, nil), "scope", billing), nil, 401, "invalid_client"},
		{"client assertion expired", cc(f.clientAssertion(map[string]any{"exp": f.now.Add(-time.Hour).Unix()}, nil), "scope", billing), nil, 401, "invalid_client"},
		{"client assertion without exp", cc(f.clientAssertion(map[string]any{"exp": nil}, nil), "scope", billing), nil, 401, "invalid_client"},
		{"client assertion far in the future", cc(f.clientAssertion(map[string]any{"exp": f.now.Add(24 * time.Hour).Unix()}, nil), "scope", billing), nil, 401, "invalid_client"},
		{"client assertion issued in the future", cc(f.clientAssertion(map[string]any{"iat": f.now.Add(3 * time.Minute).Unix(), "exp": f.now.Add(4 * time.Minute).Unix()}, nil), "scope", billing), nil, 401, "invalid_client"},
		{"client assertion not yet valid", cc(f.clientAssertion(map[string]any{"nbf": f.now.Add(2 * time.Minute).Unix()}, nil), "scope", billing), nil, 401, "invalid_client"},
		{"client assertion without jti", cc(f.clientAssertion(map[string]any{"jti": nil}, nil), "scope", billing), nil, 401, "invalid_client"},
		{"client assertion replayed", cc(usedClient, "scope", billing), nil, 401, "invalid_client"},
		{"client_id mismatch", cc(f.clientAssertion(nil, nil), "scope", billing, "client_id", "someone"), nil, 401, "invalid_client"},
		{"client may not use the template", cc(f.clientAssertion(nil, nil), "scope", "template:other other.read"), nil, 400, "unauthorized_client"},
		{"client resource not allowed", cc(f.clientAssertion(nil, nil), "scope", billing, "resource", "https://tools.example.com"), nil, 400, "invalid_target"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, h, body := f.post(tc.form, tc.header...)
			if status != tc.status || body["error"] != tc.code {
				t.Errorf("got %d %v, want %d %s", status, body, tc.status, tc.code)
			}
			if d, _ := body["error_description"].(string); d == "" {
				t.Errorf("no error_description: %v", body)
			}
			if _, has := body["access_token"]; has {
				t.Errorf("a refusal carries a token")
			}
			if h.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control = %q", h.Get("Cache-Control"))
			}
		})
	}
	if got := f.ledger.writes.Load() - before; got != 0 {
		t.Errorf("%d refusals wrote the ledger", got)
	}
	if len(cases) < 30 {
		t.Errorf("only %d cases", len(cases))
	}
}
