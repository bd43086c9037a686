package e2e

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/throttle"
)

// TestClientSecretThrottle guards issue 9 (low): /v1/introspect took
// unlimited wrong client secrets. After throttle.FailuresPerWindow
// failures for one client id every attempt with it answers 429 in the
// error shape with Retry-After, the right secret included, until the
// window passes on the broker's clock; other client ids are unaffected.
// Each wrong secret is a 401 "invalid client credentials".
func TestClientSecretThrottle(t *testing.T) {
	e := newEnv(t, envOptions{})
	_, tt := e.declared("agent-7", 120)
	form := "application/x-www-form-urlencoded"
	try := func(id, secret string) response {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/introspect", strings.NewReader(url.Values{"token": {tt}}.Encode()))
		req.Header.Set("Content-Type", form)
		req.SetBasicAuth(id, secret)
		return e.send(req)
	}
	for i := range throttle.FailuresPerWindow {
		// A wrong secret says the client credentials were wrong (issue
		// 10), not the identity check's "unable to verify bearer token".
		if r := try(clientID, "wrong-guess-"+itoa(i)); r.Status != http.StatusUnauthorized || r.json(t)["message"] != "invalid client credentials" {
			t.Fatalf("guess %d: %d %s", i, r.Status, r.Body)
		}
	}
	r := try(clientID, clientSecret)
	if r.Status != http.StatusTooManyRequests || r.json(t)["error"] != "too_many_requests" || r.Header.Get("Retry-After") != "60" {
		t.Fatalf("right secret after %d failures: %d %v %s, want 429 with Retry-After 60", throttle.FailuresPerWindow, r.Status, r.Header, r.Body)
	}
	if r := try("another-client", "x"); r.Status != http.StatusUnauthorized {
		t.Fatalf("another client id: %d", r.Status)
	}
	e.clock.Advance(throttle.Window + time.Second)
	if r := try(clientID, clientSecret); r.Status != http.StatusOK {
		t.Fatalf("after the window: %d %s", r.Status, r.Body)
	}
}
