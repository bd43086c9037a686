package ssf_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/ssf"
)

func memoryTransmitter(t *testing.T, queue int) (*ssf.Transmitter, *revocation.MemorySSFStore) {
	t.Helper()
	ledger := revocation.NewMemoryLedger(time.Now, time.Hour)
	hub, err := fanout.New(ledger.Feed(), fanout.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := issuers.GenerateSigningKey("")
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: valetURL, Keys: []issuers.SigningKey{{Private: key}}}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	store := revocation.NewMemorySSFStore(nil)
	tr, err := ssf.NewTransmitter(ssf.TransmitterConfig{Issuer: valetURL, Signer: tokens, Store: store, Feed: hub, QueueSize: queue})
	if err != nil {
		t.Fatal(err)
	}
	return tr, store
}

func agentEvent(agent string) ssf.Event {
	return ssf.Event{Type: ssf.EventSessionRevoked, At: time.Now(), Payload: map[string]any{},
		Subject: ssf.Complex(map[string]ssf.Subject{"user": ssf.IssSub("https://idp.example", agent), "session": ssf.Opaque("tsk_1")})}
}

// TestStreamStatusSubjectsAndBounds: a removed subject (or a member of a
// complex subject) gets no events until added back; a disabled stream keeps
// none, a paused one holds them; a full queue drops and counts; events not
// requested are not delivered; verification is rate-limited.
func TestStreamStatusSubjectsAndBounds(t *testing.T) {
	tr, store := memoryTransmitter(t, 3)
	ctx := t.Context()
	cfg, err := tr.CreateStream(ctx, "admin:t", ssf.StreamConfig{EventsRequested: []string{ssf.EventSessionRevoked},
		Delivery: &ssf.DeliveryConfig{Method: ssf.DeliveryPoll}})
	if err != nil {
		t.Fatal(err)
	}
	id := cfg.StreamID
	pending := func() int { q, _ := store.Pending(ctx, id, 100); return len(q) }
	drain := func() {
		q, _ := store.Pending(ctx, id, 100)
		for _, x := range q {
			_, _ = store.Ack(ctx, id, []string{x.JTI})
		}
	}

	removed, _ := json.Marshal(ssf.IssSub("https://idp.example", "agent-1"))
	if err := tr.RemoveSubject(ctx, ssf.SubjectRequest{StreamID: id, Subject: removed}); err != nil {
		t.Fatal(err)
	}
	_ = tr.Publish(ctx, agentEvent("agent-1"), agentEvent("agent-2"))
	if n := pending(); n != 1 {
		t.Fatalf("after removing agent-1: %d queued, want 1 (agent-2's)", n)
	}
	drain()
	if err := tr.AddSubject(ctx, ssf.SubjectRequest{StreamID: id, Subject: removed}); err != nil {
		t.Fatal(err)
	}
	_ = tr.Publish(ctx, agentEvent("agent-1"))
	if n := pending(); n != 1 {
		t.Fatalf("after adding agent-1 back: %d queued, want 1", n)
	}
	drain()

	_ = tr.Publish(ctx, ssf.Event{Type: ssf.EventAccountDisabled, Subject: ssf.Opaque("agent-3"), Payload: map[string]any{}})
	if n := pending(); n != 0 {
		t.Fatalf("an event type not requested was queued")
	}

	if _, err := tr.SetStatus(ctx, ssf.StreamStatus{StreamID: id, Status: ssf.StatusDisabled}); err != nil {
		t.Fatal(err)
	}
	_ = tr.Publish(ctx, agentEvent("agent-2"))
	if n := pending(); n != 0 {
		t.Fatalf("a disabled stream kept %d SETs", n)
	}
	if _, err := tr.SetStatus(ctx, ssf.StreamStatus{StreamID: id, Status: ssf.StatusPaused, Reason: "maintenance"}); err != nil {
		t.Fatal(err)
	}
	_ = tr.Publish(ctx, agentEvent("agent-2"))
	resp, err := tr.Poll(ctx, id, ssf.PollRequest{ReturnImmediately: true})
	if err != nil || len(resp.Sets) != 0 || pending() != 1 {
		t.Fatalf("a paused stream: poll %v %v, %d held; want nothing polled and 1 held", resp.Sets, err, pending())
	}
	_, _ = tr.SetStatus(ctx, ssf.StreamStatus{StreamID: id, Status: ssf.StatusEnabled})
	if resp, _ := tr.Poll(ctx, id, ssf.PollRequest{ReturnImmediately: true}); len(resp.Sets) != 1 {
		t.Fatalf("the held SET was not delivered once enabled: %v", resp.Sets)
	}

	_ = tr.Publish(ctx, agentEvent("a"), agentEvent("b"), agentEvent("c"))
	if n := pending(); n != 3 {
		t.Fatalf("queue holds %d, want its bound of 3", n)
	}
	if got := testutil.ToFloat64(tr.Counter(ssf.ResultQueueFull)); got != 1 {
		t.Fatalf("queue_full = %v, want 1", got)
	}

	if err := tr.Verify(ctx, ssf.VerifyRequest{StreamID: id}); err != nil {
		t.Fatal(err)
	}
	var be *broker.Error
	if err := tr.Verify(ctx, ssf.VerifyRequest{StreamID: id}); !errors.As(err, &be) || be.Code != broker.CodeTooManyRequests {
		t.Fatalf("second verification at once: %v, want too_many_requests", err)
	}
	if err := tr.DeleteStream(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Stream(ctx, id); !errors.As(err, &be) || be.Code != broker.CodeNotFound {
		t.Fatalf("deleted stream: %v", err)
	}
}

// TestStreamConfigValidation: bad stream configurations are refused with
// the field named.
func TestStreamConfigValidation(t *testing.T) {
	tr, _ := memoryTransmitter(t, 0)
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'a'
	}
	cases := map[string]ssf.StreamConfig{
		"delivery":                      {},
		"delivery.method":               {Delivery: &ssf.DeliveryConfig{Method: "urn:example:smoke-signals"}},
		"stream_id":                     {StreamID: "mine", Delivery: &ssf.DeliveryConfig{Method: ssf.DeliveryPoll}},
		"description":                   {Description: string(long), Delivery: &ssf.DeliveryConfig{Method: ssf.DeliveryPoll}},
		"aud[1]":                        {Aud: ssf.Audience{"ok", ""}, Delivery: &ssf.DeliveryConfig{Method: ssf.DeliveryPoll}},
		"delivery.endpoint_url":         {Delivery: &ssf.DeliveryConfig{Method: ssf.DeliveryPoll, EndpointURL: "https://elsewhere.example"}},
		"delivery.authorization_header": {Delivery: &ssf.DeliveryConfig{Method: ssf.DeliveryPoll, AuthorizationHeader: "a\x1bb"}},
	}
	for field, c := range cases {
		_, err := tr.CreateStream(t.Context(), "admin:t", c)
		var be *broker.Error
		if !errors.As(err, &be) || be.Code != broker.CodeInvalid || be.Field != field {
			t.Errorf("%s: err = %v, want invalid_request on %s", field, err, field)
		}
	}
}
