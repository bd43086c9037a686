package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/valet-dev/valet/internal/testkit"
)

// TestServeRedisDownAtStart: `valet serve` with nothing listening at its
// Redis URL starts, says so in one clear log line, answers /readyz with
// 503 naming the ledger, and writes only JSON log records (go-redis's own
// lines go through slog, never raw to stderr).
func TestServeRedisDownAtStart(t *testing.T) {
	v := startServeAt(t, "redis-down-test-secret-"+strings.Repeat("x", 8), "redis://"+testkit.FreeAddr(t)+"/0", http.StatusServiceUnavailable)
	resp, err := http.Get(v.base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "ledger is unavailable") {
		t.Errorf("/readyz: %d %s, want 503 naming the ledger", resp.StatusCode, body)
	}
	log := v.stderr.String()
	if n := strings.Count(log, "redis is unreachable at start"); n != 1 {
		t.Errorf("%d lines say Redis is unreachable at start, want 1:\n%s", n, log)
	}
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if !json.Valid([]byte(line)) {
			t.Errorf("a log line that is not a JSON record: %q", line)
		}
	}
}
