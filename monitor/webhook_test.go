package monitor

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// TestWebhookAlert: a firing rule POSTs its monitor.triggered event to an
// allowed webhook; a webhook off the allow-list is never called (and
// CheckRules names it); a failing webhook is logged by host only, never
// with its secret path.
func TestWebhookAlert(t *testing.T) {
	var mu sync.Mutex
	var got []broker.Event
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e broker.Event
		b, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(b, &e)
		mu.Lock()
		got = append(got, e)
		mu.Unlock()
		if strings.Contains(r.URL.Path, "fail") {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer hook.Close()
	host := strings.TrimPrefix(hook.URL, "http://")
	var logs bytes.Buffer
	rs := rules(t, `  - {name: allowed, when: 'agent.denials_per_minute >= 1', action: alert, webhook: '`+hook.URL+`/secret-token-1'}
  - {name: elsewhere, when: 'agent.denials_per_minute >= 1', action: alert, webhook: 'http://not-allowed.example/secret-token-2'}
  - {name: failing, when: 'agent.denials_per_minute >= 2', action: alert, webhook: '`+hook.URL+`/fail/secret-token-3'}
`)
	m, tr, _, _ := newMonitor(t, Config{Rules: rs, AlertHosts: []string{strings.ToUpper(host)}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err := m.CheckRules(rs()); err == nil || !strings.Contains(err.Error(), "monitor elsewhere (m.yaml)") || strings.Contains(err.Error(), "allowed (") {
		t.Fatalf("CheckRules = %v, want only elsewhere named", err)
	}
	m.observe(t.Context(), denied("a"))
	m.observe(t.Context(), denied("a"))
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0].Type != "monitor.triggered" || got[0].Rule != "allowed" || got[0].Detail["agent"] != "a" || got[1].Rule != "failing" {
		t.Fatalf("webhook got %+v", got)
	}
	if n := len(tr.ofType("monitor.triggered")); n != 3 {
		t.Fatalf("%d triggers audited, want 3 (the refused webhook's rule still fires)", n)
	}
	l := logs.String()
	if !strings.Contains(l, "not on monitor.alert_hosts") || !strings.Contains(l, "refused the alert") || !strings.Contains(l, "status=500") {
		t.Fatalf("logs:\n%s", l)
	}
	if strings.Contains(l, "secret-token") {
		t.Fatalf("a webhook path was logged:\n%s", l)
	}
	if u, _ := url.Parse(hook.URL); !strings.Contains(l, "webhook_host="+u.Host) {
		t.Fatalf("logs do not name the host:\n%s", l)
	}
}

// TestWebhookDownIsLoggedByHost: a webhook that cannot be reached is
// logged with its host, not its URL.
func TestWebhookDownIsLoggedByHost(t *testing.T) {
	hook := httptest.NewServer(http.NotFoundHandler())
	raw := hook.URL + "/secret-token-4"
	hook.Close()
	var logs bytes.Buffer
	m, _, _, _ := newMonitor(t, Config{Rules: rules(t, `  - {name: down, when: 'agent.denials_per_minute >= 1', action: alert, webhook: '`+raw+`'}
`), AlertHosts: []string{strings.TrimPrefix(hook.URL, "http://")}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	m.observe(t.Context(), denied("a"))
	if l := logs.String(); !strings.Contains(l, "monitor webhook failed") || strings.Contains(l, "secret-token") {
		t.Fatalf("logs:\n%s", l)
	}
}
