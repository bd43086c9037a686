package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
)

// TestLoadConfigAuditSync: audit.sync defaults to grant, interval defaults
// to 100ms, and values outside the documented bounds are refused by name.
func TestLoadConfigAuditSync(t *testing.T) {
	dir := t.TempDir()
	base, err := os.ReadFile("../../examples/serve.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(base), "audit:\n") {
		t.Fatal("examples/serve.yaml has no audit: section to extend")
	}
	load := func(name, audit string) (*Config, error) {
		text := strings.Replace(string(base), "audit:\n", "audit:\n"+audit, 1)
		return loadConfig(writeFile(t, dir, name, text), func(string) string { return "" })
	}
	cfg, err := load("default.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Audit.Sync != "grant" || cfg.Audit.SyncInterval != 0 {
		t.Fatalf("defaults: sync %q, interval %s", cfg.Audit.Sync, time.Duration(cfg.Audit.SyncInterval))
	}
	cfg, err = load("interval.yaml", "  sync: interval\n")
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(cfg.Audit.SyncInterval) != 100*time.Millisecond {
		t.Fatalf("interval default %s, want 100ms", time.Duration(cfg.Audit.SyncInterval))
	}
	for _, c := range []struct{ name, audit, want string }{
		{"unknown mode", "  sync: sometimes\n", "audit.sync:"},
		{"too short", "  sync: interval\n  sync_interval: 1ms\n", "audit.sync_interval"},
		{"too long", "  sync: interval\n  sync_interval: 5s\n", "audit.sync_interval"},
		{"interval without the mode", "  sync_interval: 50ms\n", "audit.sync_interval"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := load(strings.ReplaceAll(c.name, " ", "_")+".yaml", c.audit)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error does not name %s: %v", c.want, err)
			}
		})
	}
}

// TestApplyAuditSyncStatesTheBound: interval mode says its bound in the
// start-up log, and closing stops the background fsync before the file.
func TestApplyAuditSyncStatesTheBound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, f, err := audit.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	c, err := applyAuditSync(l, f, AuditConfig{File: path, Sync: "interval", SyncInterval: Duration(20 * time.Millisecond)}, newLogger(&logBuf, "info", "json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logBuf.String(), `"audit_sync_interval":"20ms"`) {
		t.Fatalf("start-up log does not state the bound: %s", logBuf.String())
	}
	if err := l.Record(context.Background(), broker.Event{Type: "task.granted", TaskID: "tsk_1"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	rf, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	if last, err := audit.Verify(rf); err != nil || last.Seq != 1 {
		t.Fatalf("Verify = seq %d, %v", last.Seq, err)
	}
}
