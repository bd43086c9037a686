package ssf_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	mathrand "math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/ssf"
)

const (
	idpIssuer = "https://idp.corp.example"
	valetAud  = "https://valet.example/ssf/receive/corp"
)

// testTransmitter is an SSF transmitter written from the specs: an ES256
// key published as a JWKS, and SETs signed as RFC 8417 says.
type testTransmitter struct {
	key  *ecdsa.PrivateKey
	jwks *httptest.Server
}

func newTestTransmitter(t testing.TB) *testTransmitter {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tt := &testTransmitter{key: k}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &k.PublicKey, KeyID: "tx1", Algorithm: "ES256", Use: "sig"}}}
	tt.jwks = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(tt.jwks.Close)
	return tt
}

// sign signs claims with key (the transmitter's by default) and typ.
func sign(t testing.TB, key any, typ string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithHeader("kid", "tx1")
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func claims(jti, event string, sub map[string]any) map[string]any {
	return map[string]any{"iss": idpIssuer, "aud": valetAud, "iat": time.Now().Unix(), "jti": jti, "sub_id": sub,
		"events": map[string]any{event: map[string]any{"event_timestamp": time.Now().Unix()}}}
}

// recordingControls records what the receiver asks of the incident
// controls.
type recordingControls struct {
	mu       sync.Mutex
	down     int // fail this many calls with unavailable first
	controls []broker.Control
	revokes  []incident.Selector
	reasons  []string
	actors   []string
}

func (c *recordingControls) PutControl(_ context.Context, who incident.AdminPrincipal, ctl broker.Control, revoke, force bool) (broker.Control, *incident.RevocationJob, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.down > 0 {
		c.down--
		return broker.Control{}, nil, broker.Unavailable("the control store", context.DeadlineExceeded)
	}
	c.controls = append(c.controls, ctl)
	c.reasons = append(c.reasons, ctl.Reason)
	c.actors = append(c.actors, who.Actor())
	return ctl, nil, nil
}

func (c *recordingControls) Revoke(_ context.Context, who incident.AdminPrincipal, sel incident.Selector, reason string) (incident.RevocationJob, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.revokes = append(c.revokes, sel)
	c.reasons = append(c.reasons, reason)
	c.actors = append(c.actors, who.Actor())
	return incident.RevocationJob{}, nil
}

func (c *recordingControls) calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.controls) + len(c.revokes)
}

type receiverFixture struct {
	r        *ssf.Receiver
	tx       *testTransmitter
	controls *recordingControls
	url      string
}

func newReceiverFixture(t testing.TB) receiverFixture {
	tx := newTestTransmitter(t)
	rc := &recordingControls{}
	r, err := ssf.NewReceiver(ssf.ReceiverConfig{
		Transmitters: []ssf.TrustedTransmitter{{Name: "corp", Issuer: idpIssuer, JWKSURL: tx.jwks.URL, Audience: []string{valetAud},
			AuthorizationHeader: "Bearer push-secret", SubjectIssuer: "corp", SubjectIssuerURL: idpIssuer,
			Actions: map[string]ssf.Action{ssf.EventAccountDisabled: ssf.ActionFreezeAgent, ssf.EventSessionRevoked: ssf.ActionRevokeTasks}}},
		Actions: rc, Replay: revocation.NewMemoryLedger(time.Now, time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := chi.NewRouter()
	mux.Post("/ssf/receive/{transmitter}", r.ServeHTTP)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return receiverFixture{r: r, tx: tx, controls: rc, url: srv.URL}
}

func (f receiverFixture) push(t testing.TB, path, ctype, auth, body string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, f.url+path, strings.NewReader(body))
	req.Header.Set("Content-Type", ctype)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (f receiverFixture) pushSET(t testing.TB, raw string) int {
	return f.push(t, "/ssf/receive/corp", "application/secevent+jwt", "Bearer push-secret", raw)
}

// TestReceiverActs: a test transmitter's account-disabled freezes the agent
// and its session-revoked revokes the user's tasks, through the incident
// controls, each with the jti and event type as the reason.
func TestReceiverActs(t *testing.T) {
	f := newReceiverFixture(t)
	freeze := sign(t, f.tx.key, "secevent+jwt", claims("jti-1", ssf.EventAccountDisabled,
		map[string]any{"format": "iss_sub", "iss": idpIssuer, "sub": "agent-7"}))
	if code := f.pushSET(t, freeze); code != http.StatusAccepted {
		t.Fatalf("freeze SET: %d", code)
	}
	revoke := sign(t, f.tx.key, "secevent+jwt", claims("jti-2", ssf.EventSessionRevoked,
		map[string]any{"format": "complex", "user": map[string]any{"format": "email", "email": "alice@corp.example"},
			"session": map[string]any{"format": "opaque", "id": "s1"}}))
	if code := f.pushSET(t, revoke); code != http.StatusAccepted {
		t.Fatalf("revoke SET: %d", code)
	}
	ignored := sign(t, f.tx.key, "secevent+jwt", claims("jti-3", ssf.EventCredentialChange,
		map[string]any{"format": "opaque", "id": "x"}))
	if code := f.pushSET(t, ignored); code != http.StatusAccepted {
		t.Fatalf("an event without an action: %d", code)
	}
	c := f.controls
	if len(c.controls) != 1 || c.controls[0].Kind != broker.ControlFreezeAgent || c.controls[0].Target != "agent-7" || c.controls[0].Issuer != "corp" {
		t.Fatalf("controls = %+v", c.controls)
	}
	if len(c.revokes) != 1 || c.revokes[0].Agent != "alice@corp.example" || c.revokes[0].Issuer != "corp" {
		t.Fatalf("revokes = %+v", c.revokes)
	}
	for i, want := range []string{"jti=jti-1", "jti=jti-2"} {
		if !strings.Contains(c.reasons[i], want) || !strings.Contains(c.reasons[i], "https://schemas.openid.net/secevent/") {
			t.Errorf("reason %d = %q, want the jti and event type", i, c.reasons[i])
		}
		if c.actors[i] != "admin:ssf/corp" {
			t.Errorf("actor %d = %q", i, c.actors[i])
		}
	}
}

// TestReceiverRefusesBadSETs: a malformed, unsigned, forged, replayed,
// foreign-audience, wrong-issuer or otherwise bad SET is refused and
// changes nothing.
func TestReceiverRefusesBadSETs(t *testing.T) {
	f := newReceiverFixture(t)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sub := map[string]any{"format": "iss_sub", "iss": idpIssuer, "sub": "agent-7"}
	good := func(jti string) map[string]any { return claims(jti, ssf.EventAccountDisabled, sub) }
	with := func(jti string, k string, v any) map[string]any {
		c := good(jti)
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	replayed := sign(t, f.tx.key, "secevent+jwt", good("jti-replay"))
	if code := f.pushSET(t, replayed); code != http.StatusAccepted {
		t.Fatalf("first delivery: %d", code)
	}
	before := f.controls.calls()
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	cases := []struct {
		name        string
		path, ctype string
		auth, body  string
		want        int
	}{
		{"malformed", "", "", "", "not.a.jwt!", 400},
		{"empty", "", "", "", "", 400},
		{"one segment", "", "", "", "abc", 400},
		{"unsigned alg none", "", "", "", b64(`{"alg":"none","typ":"secevent+jwt"}`) + "." + b64(mustJSON(good("jti-none"))) + ".", 400},
		{"forged signature", "", "", "", sign(t, other, "secevent+jwt", good("jti-forged")), 400},
		{"replayed", "", "", "", replayed, 400},
		{"foreign audience", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-aud", "aud", "https://other.example")), 400},
		{"empty audience array", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-aud2", "aud", []string{})), 400},
		{"numeric audience", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-aud3", "aud", 7)), 400},
		{"no audience", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-aud4", "aud", nil)), 400},
		{"wrong issuer", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-iss", "iss", "https://evil.example")), 400},
		{"no jti", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("", "jti", nil)), 400},
		{"no iat", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-iat", "iat", nil)), 400},
		{"iat in the future", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-fut", "iat", time.Now().Add(time.Hour).Unix())), 400},
		{"too old", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-old", "iat", time.Now().Add(-48*time.Hour).Unix())), 400},
		{"expired", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-exp", "exp", time.Now().Add(-time.Hour).Unix())), 400},
		{"no events", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-ev", "events", nil)), 400},
		{"wrong typ", "", "", "", sign(t, f.tx.key, "JWT", good("jti-typ")), 400},
		{"no typ", "", "", "", sign(t, f.tx.key, "", good("jti-notyp")), 400},
		{"subject of another issuer", "", "", "", sign(t, f.tx.key, "secevent+jwt", with("jti-sub", "sub_id",
			map[string]any{"format": "iss_sub", "iss": "https://evil.example", "sub": "agent-7"})), 400},
		{"wrong content type", "", "application/json", "", sign(t, f.tx.key, "secevent+jwt", good("jti-ct")), 415},
		{"wrong authorization", "", "", "Bearer nope", sign(t, f.tx.key, "secevent+jwt", good("jti-auth")), 401},
		{"unknown transmitter", "/ssf/receive/nobody", "", "", sign(t, f.tx.key, "secevent+jwt", good("jti-who")), 404},
		{"oversized", "", "", "", strings.Repeat("a", 20000) + ".b.c", 400},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, ctype, auth := c.path, c.ctype, c.auth
			if path == "" {
				path = "/ssf/receive/corp"
			}
			if ctype == "" {
				ctype = "application/secevent+jwt"
			}
			if auth == "" {
				auth = "Bearer push-secret"
			}
			if got := f.push(t, path, ctype, auth, c.body); got != c.want {
				t.Errorf("status = %d, want %d", got, c.want)
			}
			if n := f.controls.calls(); n != before {
				t.Errorf("a refused SET acted: %d calls, want %d", n, before)
			}
		})
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

// FuzzReceiver: no body a party without the transmitter's key can send
// is accepted or acts.
func FuzzReceiver(f *testing.F) {
	fx := newReceiverFixture(f)
	seed := sign(f, fx.tx.key, "secevent+jwt", claims("seed", ssf.EventAccountDisabled, map[string]any{"format": "opaque", "id": "a"}))
	parts := strings.Split(seed, ".")
	f.Add(parts[0] + "." + parts[1] + ".")
	f.Add(parts[0] + ".." + parts[2])
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add(strings.Repeat(".", 1000))
	f.Add(parts[0] + "." + strings.ToUpper(parts[1]) + "." + parts[2])
	f.Fuzz(func(t *testing.T, body string) {
		if body == seed {
			return
		}
		// Verify is what parses the body; the HTTP path adds only the
		// content-type and authorization checks before it.
		if _, err := fx.r.Verify(context.Background(), "corp", body); err == nil {
			t.Fatalf("verified %q", body)
		}
		if n := fx.controls.calls(); n != 0 {
			t.Fatalf("%d actions taken", n)
		}
	})
}

// TestReceiverRetryAfterFailedAction: a SET whose action failed (503) is
// taken when the transmitter pushes it again, once; after that it is a
// replay.
func TestReceiverRetryAfterFailedAction(t *testing.T) {
	f := newReceiverFixture(t)
	f.controls.down = 1
	set := sign(t, f.tx.key, "secevent+jwt", claims("jti-retry", ssf.EventAccountDisabled,
		map[string]any{"format": "opaque", "id": "agent-8"}))
	if code := f.pushSET(t, set); code != http.StatusServiceUnavailable {
		t.Fatalf("with the controls down: %d, want 503", code)
	}
	if code := f.pushSET(t, set); code != http.StatusAccepted {
		t.Fatalf("the transmitter's retry: %d, want 202", code)
	}
	if code := f.pushSET(t, set); code != http.StatusBadRequest {
		t.Fatalf("a replay after success: %d, want 400", code)
	}
	if n := f.controls.calls(); n != 1 {
		t.Fatalf("%d actions, want 1", n)
	}
}

// TestReceiverRandomBodiesOverHTTP: random bodies and mangled SETs pushed
// over HTTP are refused promptly and act on nothing.
func TestReceiverRandomBodiesOverHTTP(t *testing.T) {
	f := newReceiverFixture(t)
	good := sign(t, f.tx.key, "secevent+jwt", claims("jti-r", ssf.EventAccountDisabled, map[string]any{"format": "opaque", "id": "a"}))
	rng := mathrand.New(mathrand.NewPCG(1, 2))
	for i := range 300 {
		var body []byte
		switch i % 3 {
		case 0:
			body = make([]byte, rng.IntN(2048))
			for j := range body {
				body[j] = byte(rng.IntN(256))
			}
		case 1:
			body = []byte(good)
			for range 1 + rng.IntN(4) {
				body[rng.IntN(len(body))] = "ABCxyz019-_."[rng.IntN(12)]
			}
		default:
			body = []byte(strings.Repeat(".", rng.IntN(5000)))
		}
		if string(body) == good {
			continue
		}
		if code := f.pushSET(t, string(body)); code == http.StatusAccepted || code >= 500 {
			t.Fatalf("body %d: status %d", i, code)
		}
	}
	if n := f.controls.calls(); n != 0 {
		t.Fatalf("%d actions taken", n)
	}
}

// TestReceiverQuarantinesTemplates: a signal mapped to quarantine_template
// tightens the transmitter's configured templates (a quarantine_template
// control with revoke on each, whatever the subject), with the SET's
// event type and jti as the reason; a replay changes nothing; the action
// without templates refuses the configuration.
func TestReceiverQuarantinesTemplates(t *testing.T) {
	tx := newTestTransmitter(t)
	rc := &recordingControls{}
	cfg := ssf.ReceiverConfig{
		Transmitters: []ssf.TrustedTransmitter{{Name: "corp", Issuer: idpIssuer, JWKSURL: tx.jwks.URL, Audience: []string{valetAud},
			SubjectIssuer: "corp", SubjectIssuerURL: idpIssuer, Templates: []string{"payments", "prod-deploy"},
			Actions: map[string]ssf.Action{ssf.EventRiskLevelChange: ssf.ActionQuarantineTemplate}}},
		Actions: rc, Replay: revocation.NewMemoryLedger(time.Now, time.Hour),
	}
	r, err := ssf.NewReceiver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := chi.NewRouter()
	mux.Post("/ssf/receive/{transmitter}", r.ServeHTTP)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f := receiverFixture{r: r, tx: tx, controls: rc, url: srv.URL}
	set := sign(t, tx.key, "secevent+jwt", claims("risk-1", ssf.EventRiskLevelChange,
		map[string]any{"format": "opaque", "id": "tenant-1"}))
	if code := f.pushSET(t, set); code != http.StatusAccepted {
		t.Fatalf("risk SET: %d", code)
	}
	if code := f.pushSET(t, set); code != http.StatusBadRequest {
		t.Fatalf("replay: %d, want 400", code)
	}
	if len(rc.controls) != 2 {
		t.Fatalf("controls = %+v, want the two templates quarantined once", rc.controls)
	}
	for i, want := range []string{"payments", "prod-deploy"} {
		c := rc.controls[i]
		if c.Kind != broker.ControlQuarantineTemplate || c.Target != want || c.Issuer != "" ||
			!strings.Contains(c.Reason, "jti=risk-1") || !strings.Contains(c.Reason, ssf.EventRiskLevelChange) || rc.actors[i] != "admin:ssf/corp" {
			t.Fatalf("control %d = %+v by %s", i, c, rc.actors[i])
		}
	}
	cfg.Transmitters[0].Templates = nil
	if _, err := ssf.NewReceiver(cfg); err == nil || !strings.Contains(err.Error(), "quarantine_template needs the templates it suspends") {
		t.Fatalf("quarantine_template without templates: %v", err)
	}
}
