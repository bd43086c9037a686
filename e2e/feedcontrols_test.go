package e2e

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestVerifierControlsByFeed guards controls on the revocation feed: a tool
// server following the feed used to keep accepting a frozen agent's live
// token (only revocations and epochs were on the feed), unless the
// responder also revoked. Now the freeze reaches it as `event: control`
// within the feed's delivery, with no call to Valet to check; a verifier
// started after the freeze learns it from the snapshot; the lift reaches
// both.
func TestVerifierControlsByFeed(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates, incident: true})
	ts, _, ct := newToolServer(t, e, true)
	_, tok := e.declareIn("crew", "agent-a", "tickets.read")
	if s := call(t, ts, tok, http.MethodGet, "/tickets/1"); s != http.StatusOK {
		t.Fatalf("first call: %d", s)
	}
	rita := e.adminToken("rita", "valet-responders")
	before := ct.get("/v1/introspect")
	frozen := time.Now()
	if r := e.adminDo(http.MethodPost, "/v1/admin/controls", rita, `{"kind":"freeze_agent","target":"agent-a","reason":"leaked"}`); r.Status != http.StatusCreated {
		t.Fatalf("freeze: %d %s", r.Status, r.Body)
	}
	// waitStatus polls a real background delivery (the feed) for up to a second.
	waitStatus := func(ts *httptest.Server, want int, what string) {
		t.Helper()
		start := time.Now()
		for {
			s := call(t, ts, tok, http.MethodGet, "/tickets/1")
			if s == want {
				return
			}
			if time.Since(start) > time.Second {
				t.Fatalf("%s: still %d after %s", what, s, time.Since(start))
			}
			time.Sleep(5 * time.Millisecond) // bounded polling of real background work
		}
	}
	waitStatus(ts, http.StatusUnauthorized, "the frozen agent's token at the feed-following verifier")
	if got := ct.get("/v1/introspect") - before; got != 0 {
		t.Fatalf("the verifier introspected %d times to refuse, want 0: the freeze came by the feed", got)
	}
	t.Logf("frozen agent's token refused %s after the freeze", time.Since(frozen).Round(time.Millisecond))

	// A tool server that starts now reads the freeze from the snapshot.
	late, _, lateCalls := newToolServer(t, e, true)
	if s := call(t, late, tok, http.MethodGet, "/tickets/1"); s != http.StatusUnauthorized {
		t.Fatalf("a verifier started after the freeze: %d, want 401", s)
	}
	if got := lateCalls.get("/v1/introspect"); got != 0 {
		t.Fatalf("the late verifier introspected %d times to refuse, want 0: the freeze came in the snapshot (%v)", got, lateCalls.snapshot())
	}

	// Lifting the freeze (the token was never revoked) reaches both.
	if r := e.adminDo(http.MethodDelete, "/v1/admin/controls?kind=freeze_agent&target=agent-a", rita, ""); r.Status != http.StatusOK {
		t.Fatalf("lift: %d %s", r.Status, r.Body)
	}
	waitStatus(ts, http.StatusOK, "the token after the lift")
	waitStatus(late, http.StatusOK, "the token after the lift, late verifier")
}
