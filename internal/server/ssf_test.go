package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/openapi"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/ssf"
)

// TestSSFThroughTheServer: a test IdP's account-disabled SET, pushed to the
// receiver, freezes the agent through the real incident controls (audited
// with its jti); the freeze goes out again on Valet's own poll stream as
// RISC account-disabled; a replay changes nothing; stream management needs
// an admin token.
func TestSSFThroughTheServer(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	o, ln, _, _ := testOptions(t, clock)
	o.Now = time.Now
	r := withRedis(t, &o, 50*time.Millisecond)
	rc, controls, trail, admins := r.rc, r.controls, r.trail, r.admins
	idp := oidctest.New(t) // the company IdP as an SSF transmitter
	store, err := revocation.NewRedisSSFStore(rc, "valet")
	if err != nil {
		t.Fatal(err)
	}
	o.Auditors = []broker.Auditor{audit.NewLog(trail)}
	o.SSF = &SSFOptions{Store: store, IssuerURLs: map[string]string{"test": "https://agents.example"},
		Receiver: &ssf.ReceiverConfig{Transmitters: []ssf.TrustedTransmitter{{Name: "idp", Issuer: idp.URL(), Algorithms: []string{"RS256", "ES256"},
			Audience: []string{"valet"}, SubjectIssuer: "test", SubjectIssuerURL: "https://agents.example",
			Actions: map[string]ssf.Action{ssf.EventAccountDisabled: ssf.ActionFreezeAgent}}}}}
	s, err := New(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(openapi.Spec)
	if err != nil {
		t.Fatal(err)
	}
	ssfRoutes := 0
	err = chi.Walk(s.Handler().(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if strings.Contains(route, "ssf") {
			ssfRoutes++
		}
		if item := doc.Paths.Find(route); item == nil || item.GetOperation(method) == nil {
			t.Errorf("route %s %s is not in openapi.yaml", method, route)
		}
		return nil
	})
	if err != nil || ssfRoutes != 13 {
		t.Fatalf("walked %d SSF routes, want 13: %v", ssfRoutes, err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() { _ = s.Run(ctx, ln) }()
	base := o.PublicURL
	adminTok := admins.Token(t, map[string]any{"aud": "valet-admin", "sub": "ops"})
	call := func(method, path, token, ctype, body string) (int, []byte) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, b
	}
	testkit.Eventually(t, func() bool { c, _ := call("GET", "/healthz", "", "", ""); return c == 200 }, "the server serves")

	if code, body := call("GET", "/.well-known/ssf-configuration", "", "", ""); code != 200 || !strings.Contains(string(body), `"spec_version":"1_0"`) {
		t.Fatalf("metadata: %d %s", code, body)
	}
	streamReq := `{"aud":"urn:siem","events_requested":["` + ssf.EventAccountDisabled + `"],"delivery":{"method":"urn:ietf:rfc:8936"}}`
	if code, _ := call("POST", "/ssf/streams", "", "application/json", streamReq); code != http.StatusUnauthorized {
		t.Fatalf("create without a token: %d, want 401", code)
	}
	code, body := call("POST", "/ssf/streams", adminTok, "application/json", streamReq)
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	var stream ssf.StreamConfig
	_ = json.Unmarshal(body, &stream)
	testkit.Eventually(t, func() bool { c, _ := store.Cursor(t.Context()); return c != "" }, "the transmitter follows the feed")

	set := idp.Token(t, map[string]any{"aud": "valet", "jti": "idp-jti-1", "sub": nil, "exp": nil,
		"sub_id": map[string]any{"format": "iss_sub", "iss": "https://agents.example", "sub": "agent-9"},
		"events": map[string]any{ssf.EventAccountDisabled: map[string]any{"reason": "hijacking"}}},
		oidctest.WithHeader("typ", "secevent+jwt"))
	if code, body := call("POST", "/ssf/receive/idp", "", "application/secevent+jwt", set); code != http.StatusAccepted {
		t.Fatalf("push: %d %s", code, body)
	}
	cs, err := controls.List(t.Context())
	if err != nil || len(cs) != 1 || cs[0].Kind != broker.ControlFreezeAgent || cs[0].Target != "agent-9" || cs[0].Issuer != "test" ||
		!strings.Contains(cs[0].Reason, "jti=idp-jti-1") || !strings.Contains(cs[0].Reason, ssf.EventAccountDisabled) || cs[0].By != "admin:ssf/idp" {
		t.Fatalf("controls = %+v, %v", cs, err)
	}
	if code, _ := call("POST", "/ssf/receive/idp", "", "application/secevent+jwt", set); code != http.StatusBadRequest {
		t.Fatalf("replay: %d, want 400", code)
	}
	if cs2, _ := controls.List(t.Context()); len(cs2) != 1 || cs2[0].At != cs[0].At {
		t.Fatalf("a replay changed the controls: %+v", cs2)
	}

	var got map[string]any
	testkit.Eventually(t, func() bool {
		code, body := call("POST", "/ssf/poll/"+stream.StreamID, adminTok, "application/json", `{"returnImmediately":true}`)
		if code != 200 {
			return false
		}
		var pr ssf.PollResponse
		_ = json.Unmarshal(body, &pr)
		for _, raw := range pr.Sets {
			p, _ := base64.RawURLEncoding.DecodeString(strings.Split(raw, ".")[1])
			_ = json.Unmarshal(p, &got)
			return true
		}
		return false
	}, "the freeze is polled as a SET")
	sub, _ := got["sub_id"].(map[string]any)
	if _, ok := got["events"].(map[string]any)[ssf.EventAccountDisabled]; !ok || sub["sub"] != "agent-9" || got["aud"] != "urn:siem" {
		t.Fatalf("polled SET = %v", got)
	}
}
