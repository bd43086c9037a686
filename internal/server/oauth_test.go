package server

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
)

// TestOAuthWiring: with OAuth, the token endpoint serves the grants and the
// metadata names it; its replay store is the agent controls' Limiter, and
// without one the server refuses to start rather than serve replayable
// assertions.
func TestOAuthWiring(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	o, ln, _, _ := testOptions(t, clock)
	ln.Close()
	o.OAuth = &OAuthOptions{}
	if l, ok := o.Ledger.(broker.Limiter); ok {
		o.Agent.Limiter = l
	}
	srv, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/.well-known/oauth-authorization-server", nil))
	var md map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &md); err != nil || md["token_endpoint"] != o.PublicURL+"/v1/token" {
		t.Errorf("metadata %v (%v)", md, err)
	}
	rec = httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/v1/token", strings.NewReader("grant_type=password"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	srv.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"unsupported_grant_type"`) {
		t.Errorf("token endpoint: %d %s", rec.Code, rec.Body)
	}

	o.Agent.Limiter = nil
	if _, err := New(context.Background(), o); err == nil || !strings.Contains(err.Error(), "replay store") {
		t.Errorf("OAuth without a replay store: %v", err)
	}
}
