package ssf_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/ssf"
)

const valetURL = "https://valet.example"

// specReceiver is an SSF receiver written from the specs, not from Valet's
// code: it takes RFC 8935 pushes, and verifies each SET as RFC 8417 and
// SSF 1.0 section 4 say (JWS signature with the transmitter's JWKS, typ
// secevent+jwt, iss, aud, jti, iat, exactly one event, sub_id, no exp).
type specReceiver struct {
	t    *testing.T
	jwks jose.JSONWebKeySet
	aud  string

	mu   sync.Mutex
	got  []receivedSET
	fail int // answer this many pushes with 503 first
}

type receivedSET struct {
	JTI    string
	Txn    string
	Type   string
	Event  map[string]any
	SubID  map[string]any
	Header string
}

func newSpecReceiver(t *testing.T, jwks []byte, aud string) *specReceiver {
	r := &specReceiver{t: t, aud: aud}
	if err := json.Unmarshal(jwks, &r.jwks); err != nil {
		t.Fatal(err)
	}
	return r
}

// verify checks one SET and returns it, or an RFC 8935 error code.
func (r *specReceiver) verify(raw string) (receivedSET, string) {
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256})
	if err != nil || len(jws.Signatures) != 1 {
		return receivedSET{}, "invalid_request"
	}
	h := jws.Signatures[0].Header
	if typ, _ := h.ExtraHeaders["typ"].(string); typ != "secevent+jwt" {
		return receivedSET{}, "invalid_request"
	}
	keys := r.jwks.Key(h.KeyID)
	if len(keys) != 1 {
		return receivedSET{}, "invalid_key"
	}
	payload, err := jws.Verify(keys[0])
	if err != nil {
		return receivedSET{}, "invalid_key"
	}
	var c struct {
		Iss    string                    `json:"iss"`
		Aud    any                       `json:"aud"`
		JTI    string                    `json:"jti"`
		IAT    *int64                    `json:"iat"`
		Exp    *int64                    `json:"exp"`
		Txn    string                    `json:"txn"`
		SubID  map[string]any            `json:"sub_id"`
		Events map[string]map[string]any `json:"events"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return receivedSET{}, "invalid_request"
	}
	switch {
	case c.Iss != valetURL:
		return receivedSET{}, "invalid_issuer"
	case c.Aud != r.aud:
		return receivedSET{}, "invalid_audience"
	case c.JTI == "" || c.IAT == nil || c.Exp != nil || len(c.Events) != 1 || c.SubID["format"] == nil:
		return receivedSET{}, "invalid_request"
	}
	out := receivedSET{JTI: c.JTI, Txn: c.Txn, SubID: c.SubID}
	for k, v := range c.Events {
		out.Type, out.Event = k, v
	}
	return out, ""
}

func (r *specReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Header.Get("Content-Type") != "application/secevent+jwt" || req.Header.Get("Authorization") != "Bearer receiver-secret" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"err":"authentication_failed","description":"wrong content type or authorization"}`)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	body, _ := io.ReadAll(req.Body)
	set, errCode := r.verify(string(body))
	if errCode != "" {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"err":"`+errCode+`","description":"refused"}`)
		return
	}
	r.got = append(r.got, set)
	w.WriteHeader(http.StatusAccepted)
}

func (r *specReceiver) received() []receivedSET {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

type fixture struct {
	tr       *ssf.Transmitter
	tokens   *issuers.JWT
	ledger   *revocation.RedisLedger
	controls *revocation.Controls
	store    ssf.Store
}

func newFixture(t *testing.T, pushHost string) fixture {
	t.Helper()
	srv := redistest.Start(t)
	c, err := revocation.NewClient(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ledger, err := revocation.NewRedisLedger(c, revocation.RedisOptions{Retention: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	controls, err := revocation.NewControls(c, "valet", 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	hub, err := fanout.New(ledger.Feed(), fanout.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: valetURL, Keys: []issuers.SigningKey{{Private: key}}}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	store, err := revocation.NewRedisSSFStore(c, "valet")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := ssf.NewTransmitter(ssf.TransmitterConfig{Issuer: valetURL, Signer: tokens, Store: store, Feed: hub, Tasks: ledger,
		IssuerURLs: map[string]string{"corp": "https://idp.corp.example"}, PushHosts: []string{pushHost},
		RetryBase: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return fixture{tr: tr, tokens: tokens, ledger: ledger, controls: controls, store: store}
}

// act records a task of agent-1 with one JWT, ends it, and freezes and
// unfreezes the agent: the three kinds of feed entry Valet transmits.
func (f fixture) act(t *testing.T) broker.Task {
	ctx := t.Context()
	now := time.Now()
	task := broker.Task{ID: broker.NewID("tsk"), State: broker.StateActive, Agent: "agent-1", Issuer: "corp", Template: "deploy",
		Tools: []string{"x"}, CreatedAt: now, Deadline: now.Add(time.Hour)}
	cred := broker.Credential{ID: "jti-" + task.ID, Kind: broker.KindJWT, TaskID: task.ID, IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
	if err := f.ledger.Record(ctx, task, []broker.Credential{cred}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.ledger.End(ctx, task.ID, broker.StateRevoked, "responder revoked it", now); err != nil {
		t.Fatal(err)
	}
	ctl := broker.Control{Kind: broker.ControlFreezeAgent, Target: "agent-1", Issuer: "corp", Reason: "r", By: "admin:x", At: now}
	if err := f.controls.Put(ctx, ctl); err != nil {
		t.Fatal(err)
	}
	if _, err := f.controls.Delete(ctx, ctl); err != nil {
		t.Fatal(err)
	}
	return task
}

// following waits until the transmitter follows the feed (it has saved
// the cursor it started from).
func (f fixture) following(t *testing.T) {
	testkit.Eventually(t, func() bool { c, _ := f.store.Cursor(t.Context()); return c != "" }, "the transmitter follows the feed")
}

var allEvents = []string{ssf.EventSessionRevoked, ssf.EventCredentialChange, ssf.EventAccountDisabled, ssf.EventAccountEnabled}

func checkEvents(t *testing.T, got []receivedSET, task broker.Task) {
	t.Helper()
	var types []string
	for _, s := range got {
		types = append(types, s.Type)
	}
	want := []string{ssf.EventSessionRevoked, ssf.EventCredentialChange, ssf.EventAccountDisabled, ssf.EventAccountEnabled}
	if !slices.Equal(types, want) {
		t.Fatalf("event types = %v, want %v", types, want)
	}
	sr := got[0]
	user, _ := sr.SubID["user"].(map[string]any)
	session, _ := sr.SubID["session"].(map[string]any)
	if sr.SubID["format"] != "complex" || user["format"] != "iss_sub" || user["iss"] != "https://idp.corp.example" ||
		user["sub"] != "agent-1" || session["format"] != "opaque" || session["id"] != task.ID {
		t.Errorf("session-revoked sub_id = %v", sr.SubID)
	}
	if sr.Event["initiating_entity"] != "admin" || sr.Event["event_timestamp"] == nil {
		t.Errorf("session-revoked event = %v", sr.Event)
	}
	cc := got[1]
	credential, _ := cc.SubID["credential"].(map[string]any)
	if cc.Event["change_type"] != "revoke" || cc.Event["credential_type"] == nil || credential["id"] != "jti-"+task.ID {
		t.Errorf("credential-change = %v / %v", cc.Event, cc.SubID)
	}
	if ad := got[2]; ad.SubID["format"] != "iss_sub" || ad.SubID["sub"] != "agent-1" {
		t.Errorf("account-disabled sub_id = %v", ad.SubID)
	}
	jtis := map[string]bool{}
	for _, s := range got {
		if jtis[s.JTI] {
			t.Errorf("jti %s sent twice", s.JTI)
		}
		jtis[s.JTI] = true
		if s.Txn == "" {
			t.Errorf("SET %s has no txn", s.Type)
		}
	}
}

// TestInteropPush: Valet's transmitter feeds a spec-written receiver by
// RFC 8935 push, through a failing first attempt (retried with backoff),
// with a verification event first.
func TestInteropPush(t *testing.T) {
	var rcv *specReceiver
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { rcv.ServeHTTP(w, r) }))
	defer ts.Close()
	u, _ := url.Parse(ts.URL)
	f := newFixture(t, u.Host)
	rcv = newSpecReceiver(t, f.tokens.JWKS(), "https://receiver.example")
	rcv.fail = 1
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	cfg, err := f.tr.CreateStream(ctx, "admin:test", ssf.StreamConfig{Aud: ssf.Audience{"https://receiver.example"},
		EventsRequested: append(slices.Clone(allEvents), "https://example.com/unknown"),
		Delivery:        &ssf.DeliveryConfig{Method: ssf.DeliveryPush, EndpointURL: ts.URL + "/events", AuthorizationHeader: "Bearer receiver-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.EventsDelivered, allEvents) || cfg.Delivery.AuthorizationHeader != "" {
		t.Fatalf("stream config = %+v", cfg)
	}
	if err := f.tr.Verify(ctx, ssf.VerifyRequest{StreamID: cfg.StreamID, State: "abc"}); err != nil {
		t.Fatal(err)
	}
	go f.tr.Run(ctx)
	testkit.Eventually(t, func() bool { return len(rcv.received()) == 1 }, "the verification event is pushed")
	if v := rcv.received()[0]; v.Type != ssf.EventVerification || v.Event["state"] != "abc" || v.SubID["id"] != cfg.StreamID {
		t.Fatalf("verification = %+v", v)
	}
	f.following(t)
	task := f.act(t)
	testkit.Eventually(t, func() bool { return len(rcv.received()) == 5 }, "four events are pushed")
	checkEvents(t, rcv.received()[1:], task)
	if n := testutil.ToFloat64(f.tr.Counter(ssf.ResultRetried)); n < 1 {
		t.Errorf("retried = %v, want at least 1", n)
	}
	testkit.Eventually(t, func() bool { return testutil.ToFloat64(f.tr.Counter(ssf.ResultDelivered)) == 5 }, "five SETs counted as delivered")
	if q, _ := f.store.Pending(ctx, cfg.StreamID, 10); len(q) != 0 {
		t.Errorf("queue still holds %d SETs", len(q))
	}
}

// newPollStream is a transmitter with one poll stream of every event for
// audience urn:receiver, and the receiver written from the spec for it.
func newPollStream(t *testing.T) (fixture, *specReceiver, ssf.StreamConfig) {
	t.Helper()
	f := newFixture(t, "unused.example")
	rcv := newSpecReceiver(t, f.tokens.JWKS(), "urn:receiver")
	cfg, err := f.tr.CreateStream(t.Context(), "admin:test", ssf.StreamConfig{Aud: ssf.Audience{"urn:receiver"}, EventsRequested: allEvents,
		Delivery: &ssf.DeliveryConfig{Method: ssf.DeliveryPoll}})
	if err != nil {
		t.Fatal(err)
	}
	return f, rcv, cfg
}

// TestInteropPoll: the spec-written receiver polls (RFC 8936), verifies and
// acknowledges; acknowledged SETs are not returned again.
func TestInteropPoll(t *testing.T) {
	f, rcv, cfg := newPollStream(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	if cfg.Delivery.EndpointURL != valetURL+"/ssf/poll/"+cfg.StreamID {
		t.Fatalf("poll endpoint = %q", cfg.Delivery.EndpointURL)
	}
	go f.tr.Run(ctx)
	f.following(t)
	task := f.act(t)
	var got []receivedSET
	var acks []string
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < 4 && time.Now().Before(deadline) {
		two := 2
		resp, err := f.tr.Poll(ctx, cfg.StreamID, ssf.PollRequest{MaxEvents: &two, ReturnImmediately: true, Ack: acks})
		if err != nil {
			t.Fatal(err)
		}
		acks = nil
		var batch []receivedSET
		for jti, raw := range resp.Sets {
			set, errCode := rcv.verify(raw)
			if errCode != "" || set.JTI != jti {
				t.Fatalf("SET %s refused by the spec receiver: %s", jti, errCode)
			}
			batch = append(batch, set)
			acks = append(acks, jti)
		}
		slices.SortFunc(batch, func(a, b receivedSET) int { return order(a.Type) - order(b.Type) })
		got = append(got, batch...)
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := f.tr.Poll(ctx, cfg.StreamID, ssf.PollRequest{ReturnImmediately: true, Ack: acks}); err != nil {
		t.Fatal(err)
	}
	slices.SortStableFunc(got, func(a, b receivedSET) int { return order(a.Type) - order(b.Type) })
	checkEvents(t, got, task)
	resp, err := f.tr.Poll(ctx, cfg.StreamID, ssf.PollRequest{ReturnImmediately: true})
	if err != nil || len(resp.Sets) != 0 {
		t.Fatalf("after acks, poll = %v, %v; want nothing", resp.Sets, err)
	}
}

func order(typ string) int { return slices.Index(allEvents, typ) }

// TestPushEndpointAllowList: a push endpoint off the allow-list is refused
// at creation.
func TestPushEndpointAllowList(t *testing.T) {
	f := newFixture(t, "receiver.example")
	for _, u := range []string{"https://evil.example/x", "ftp://receiver.example/x", "https://user@receiver.example/x", ""} {
		_, err := f.tr.CreateStream(t.Context(), "admin:test", ssf.StreamConfig{EventsRequested: allEvents,
			Delivery: &ssf.DeliveryConfig{Method: ssf.DeliveryPush, EndpointURL: u}})
		var be *broker.Error
		if !errors.As(err, &be) || be.Code != broker.CodeInvalid {
			t.Errorf("endpoint %q: err = %v, want invalid_request", u, err)
		}
	}
	if _, err := f.tr.CreateStream(t.Context(), "admin:test", ssf.StreamConfig{EventsRequested: allEvents,
		Delivery: &ssf.DeliveryConfig{Method: ssf.DeliveryPush, EndpointURL: "https://receiver.example/x"}}); err != nil {
		t.Errorf("allowed endpoint refused: %v", err)
	}
}

// TestInteropAgentEpoch: an agent's revoked-before epoch goes out as CAEP
// session-revoked about the agent; a template epoch names no subject and
// sends nothing.
func TestInteropAgentEpoch(t *testing.T) {
	f, rcv, cfg := newPollStream(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go f.tr.Run(ctx)
	f.following(t)
	now := time.Now()
	if err := f.ledger.SetEpoch(ctx, broker.Epoch{Dimension: broker.DimTemplate, Key: "deploy", Before: now}); err != nil {
		t.Fatal(err)
	}
	if err := f.ledger.SetEpoch(ctx, broker.Epoch{Dimension: broker.DimAgent, Key: broker.AgentKey("corp", "agent-1"), Before: now}); err != nil {
		t.Fatal(err)
	}
	var sets map[string]string
	testkit.Eventually(t, func() bool {
		resp, err := f.tr.Poll(ctx, cfg.StreamID, ssf.PollRequest{ReturnImmediately: true})
		sets = resp.Sets
		return err == nil && len(sets) > 0
	}, "the epoch is transmitted")
	if len(sets) != 1 {
		t.Fatalf("%d SETs, want 1 (the template epoch sends none)", len(sets))
	}
	for _, raw := range sets {
		set, code := rcv.verify(raw)
		if code != "" || set.Type != ssf.EventSessionRevoked || set.SubID["format"] != "iss_sub" || set.SubID["sub"] != "agent-1" ||
			set.SubID["iss"] != "https://idp.corp.example" {
			t.Fatalf("SET = %+v (%s)", set, code)
		}
	}
}
