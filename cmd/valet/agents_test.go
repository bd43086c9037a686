package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAgentsOutputEscapesAgentValues: subjects, labels and intents come
// from identity tokens and agents; a terminal escape in any of them is
// printed escaped by agents ls and agents show.
func TestAgentsOutputEscapesAgentValues(t *testing.T) {
	const agent = `{"id":"agt_0123456789abcdef0123456789abcdef","issuer":"corp","subject":"bot\u001b[2J","first_seen":"2026-12-01T00:00:00Z",` +
		`"last_seen":"2026-12-01T00:00:00Z","templates":["deploy"],"labels":{"owner":"pay\u001b]0;pwned\u0007"}}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/v1/admin/agents":
			w.Write([]byte(`{"agents":[` + agent + `],"next_cursor":"c\u001b[1m"}`))
		default:
			w.Write([]byte(`{"agent":` + agent + `,"live_tasks":[{"id":"tsk_1","template":"deploy","intent":"x\u001b[31mred","deadline":"2026-12-01T01:00:00Z"}],"controls":[]}`))
		}
	}))
	defer srv.Close()
	for _, args := range [][]string{{"agents", "ls"}, {"agents", "show", "agt_0123456789abcdef0123456789abcdef"}, {"agents", "ls", "-o", "json"}} {
		var o, e bytes.Buffer
		code := run(context.Background(), append(append([]string{"valet"}, args...), "--server", srv.URL, "--token", "t"), func(string) string { return "" }, &o, &e)
		if code != 0 {
			t.Fatalf("valet %v: exit %d: %s", args, code, e.String())
		}
		if strings.ContainsAny(o.String(), "\x1b\x07") {
			t.Errorf("valet %v printed a raw terminal control:\n%q", args, o.String())
		}
		if !strings.Contains(o.String(), "bot") {
			t.Errorf("valet %v did not print the agent:\n%s", args, o.String())
		}
	}
}
