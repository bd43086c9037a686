package verify_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/verify"
)

// TestProtectedResourceMetadata: RFC 9728 section 3, at the URL of section
// 3.1 for the audience.
func TestProtectedResourceMetadata(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	v := newValet(t, clock.Now)
	ver, err := verify.New(verify.Config{Issuer: v.srv.URL, Audience: "https://tools.example.com/mcp/", ClientID: client, ClientSecret: secret,
		Now: clock.Now, Scopes: []string{"template:triage", "tickets.read"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ver.ResourceMetadataURL(), "https://tools.example.com/.well-known/oauth-protected-resource/mcp"; got != want {
		t.Errorf("metadata URL %q, want %q", got, want)
	}
	rec := httptest.NewRecorder()
	ver.ProtectedResourceMetadata().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/.well-known/oauth-protected-resource/mcp", nil))
	var md map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &md); err != nil || rec.Code != http.StatusOK {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if md["resource"] != "https://tools.example.com/mcp/" {
		t.Errorf("resource %v", md["resource"])
	}
	if as, _ := md["authorization_servers"].([]any); len(as) != 1 || as[0] != v.srv.URL {
		t.Errorf("authorization_servers %v", md["authorization_servers"])
	}
	for _, k := range []string{"bearer_methods_supported", "dpop_signing_alg_values_supported", "scopes_supported"} {
		if l, _ := md[k].([]any); len(l) == 0 {
			t.Errorf("%s missing: %v", k, md)
		}
	}
	rec = httptest.NewRecorder()
	ver.ProtectedResourceMetadata().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", rec.Code)
	}
	notURL, err := verify.New(verify.Config{Issuer: v.srv.URL, Audience: "tools", ClientID: client, ClientSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	if u := notURL.ResourceMetadataURL(); u != "" {
		t.Errorf("an audience that is no URL has metadata at %q", u)
	}
	// Without configured scopes, scopes_supported is left out, not [] or
	// null (RFC 9728 section 2: optional).
	rec = httptest.NewRecorder()
	notURL.ProtectedResourceMetadata().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	md = nil
	if err := json.Unmarshal(rec.Body.Bytes(), &md); err != nil {
		t.Fatal(err)
	}
	if _, ok := md["scopes_supported"]; ok {
		t.Errorf("empty scopes_supported published: %s", rec.Body)
	}
}

// TestChallenges: 401 points at the resource metadata (RFC 9728 section
// 5.1), with invalid_token when a token was sent; 403 is
// insufficient_scope naming the tool (RFC 6750 section 3.1).
func TestChallenges(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	v := newValet(t, clock.Now)
	ver := newVerifier(t, v, clock.Now)
	md := `resource_metadata="https://tools.example.com/.well-known/oauth-protected-resource"`
	good := v.token(t, "j1", v.kid, v.key)
	cases := []struct {
		name, auth, tool string
		status           int
		want             string
	}{
		{"no token", "", "tickets.read", 401, `Bearer ` + md + `, DPoP algs="EdDSA ES256", ` + md},
		{"bad bearer token", "Bearer nope", "tickets.read", 401, `Bearer ` + md + `, error="invalid_token", DPoP algs="EdDSA ES256", ` + md},
		{"bad DPoP token", "DPoP nope", "tickets.read", 401, `Bearer ` + md + `, DPoP algs="EdDSA ES256", ` + md + `, error="invalid_token"`},
		{"tool not granted", "Bearer " + good, "tickets.write", 403, `Bearer error="insufficient_scope", scope="tickets.write", ` + md},
		{"hostile tool name", "Bearer " + good, "a\"b", 403, `Bearer error="insufficient_scope", ` + md},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := ver.Middleware(func(*http.Request) string { return tc.tool })(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
			r := httptest.NewRequest(http.MethodGet, "/tickets/1", nil)
			if tc.auth != "" {
				r.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Code != tc.status || rec.Header().Get("WWW-Authenticate") != tc.want {
				t.Errorf("%d %q, want %d %q", rec.Code, rec.Header().Get("WWW-Authenticate"), tc.status, tc.want)
			}
		})
	}
}
