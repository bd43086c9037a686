package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
)

// TestRedisLogLinesGoThroughSlog guards issue 9 #14 (log half): go-redis
// printed its own lines to stderr, outside the JSON log. With redisLogger
// installed they are slog records.
func TestRedisLogLinesGoThroughSlog(t *testing.T) {
	var buf bytes.Buffer
	redis.SetLogger(newRedisLogger(slog.New(slog.NewJSONHandler(&buf, nil))))
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer c.Close()
	_ = c.Set(context.Background(), "k", "v", 500*time.Microsecond) // go-redis logs the truncation to 1 ms
	var rec map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(bytes.SplitN(buf.Bytes(), []byte("\n"), 2)[0]), &rec); err != nil {
		t.Fatalf("go-redis line is not a JSON log record: %q", buf.String())
	}
	if rec["msg"] != "redis client" || rec["level"] != "WARN" || !strings.Contains(rec["detail"].(string), "truncating") {
		t.Fatalf("record %v", rec)
	}
}

// TestOpenAuditBrokenFile: `valet serve`/`dev` refuse a trail that does not
// verify with the file, the line and the way forward, and with
// --audit-new-segment start a new chain without touching the old file.
func TestOpenAuditBrokenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var buf bytes.Buffer
	l := audit.NewLog(&buf)
	for range 3 {
		if err := l.Record(context.Background(), broker.Event{Type: "x", Actor: "agent-a"}); err != nil {
			t.Fatal(err)
		}
	}
	broken := strings.Replace(buf.String(), "agent-a", "agent-z", 1)
	if err := os.WriteFile(path, []byte(broken), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := openAudit(path, false, nil)
	if err == nil {
		t.Fatal("a broken trail was opened")
	}
	for _, want := range []string{"audit.file", path, "line 1", "--audit-new-segment"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q: %v", want, err)
		}
	}
	l2, c, err := openAudit(path, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l2.Record(context.Background(), broker.Event{Type: "y"}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if b, _ := os.ReadFile(path + ".1"); string(b) != broken {
		t.Fatal("the broken trail was not kept unchanged")
	}
}

// TestLoadConfigAuditBounds: the stream's retention and length have
// defaults and refuse values that would make them meaningless; the token
// cap must fit the header cap.
func TestLoadConfigAuditBounds(t *testing.T) {
	dir := t.TempDir()
	base, err := os.ReadFile("../../examples/serve.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(writeFile(t, dir, "ok.yaml", string(base)), func(string) string { return "" })
	if err != nil {
		t.Skipf("examples/serve.yaml does not load from a temp dir: %v", err)
	}
	if time.Duration(cfg.Audit.StreamRetention) != 24*time.Hour+time.Duration(cfg.Redis.Retention) || cfg.Audit.StreamMaxLen != audit.DefaultStreamMaxLen {
		t.Fatalf("defaults: %+v", cfg.Audit)
	}
	bad := strings.NewReplacer("audit:\n", "audit:\n  stream_retention: 1s\n  stream_max_len: 10\n",
		"max_token_bytes: 16384", "max_token_bytes: 65536").Replace(string(base))
	_, err = loadConfig(writeFile(t, dir, "bad.yaml", bad), func(string) string { return "" })
	for _, want := range []string{"audit.stream_retention", "audit.stream_max_len", "limits.max_token_bytes"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

// TestLogLinesAreBounded: whatever a caller logs (a client id, an error
// quoting a claim), the JSON line stays small.
func TestLogLinesAreBounded(t *testing.T) {
	var buf bytes.Buffer
	log := newLogger(&buf, "info", "json")
	huge := strings.Repeat("c", 1<<20)
	log.Warn("client authentication failed", "client_id", huge, "err", errors.New(huge))
	if buf.Len() > 4*broker.MaxAuditString || !strings.Contains(buf.String(), "bytes]") {
		t.Fatalf("log line is %d bytes", buf.Len())
	}
}
