package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// trail writes n events and returns the lines.
func trail(t *testing.T, n int) []string {
	t.Helper()
	var buf bytes.Buffer
	l := NewLog(&buf)
	start := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	for i := range n {
		e := broker.Event{Time: start.Add(time.Duration(i) * time.Millisecond), Type: "task.granted",
			TaskID: fmt.Sprintf("tsk_%d", i), Actor: "agent-a", Creds: []string{fmt.Sprintf("jti-%d", i)},
			Detail: map[string]any{"ttl_seconds": 300, "ratio": 0.1 + float64(i)}}
		if err := l.Record(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	return strings.SplitAfter(strings.TrimSuffix(buf.String(), "\n"), "\n")
}

func TestVerifyIntactTrail(t *testing.T) {
	lines := trail(t, 10_000)
	last, err := Verify(strings.NewReader(strings.Join(lines, "")))
	if err != nil {
		t.Fatal(err)
	}
	if last.Seq != 10_000 {
		t.Fatalf("last seq = %d, want 10000", last.Seq)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	lines := trail(t, 10_000)
	edit := func(i int, from, to string) []string {
		out := append([]string(nil), lines...)
		if !strings.Contains(out[i], from) {
			t.Fatalf("line %d has no %q", i, from)
		}
		out[i] = strings.Replace(out[i], from, to, 1)
		return out
	}
	cases := []struct {
		name  string
		lines []string
	}{
		{"edit first event", edit(0, `"agent-a"`, `"agent-b"`)},
		{"edit middle event", edit(5_000, `"task.granted"`, `"task.denied"`)},
		{"edit last event", edit(9_999, `jti-9999`, `jti-0000`)},
		{"edit a number", edit(42, `"ttl_seconds":300`, `"ttl_seconds":301`)},
		{"delete first", lines[1:]},
		{"delete middle", append(append([]string(nil), lines[:4_999]...), lines[5_000:]...)},
		{"delete last", lines[:9_999]},
		{"swap two", func() []string {
			out := append([]string(nil), lines...)
			out[100], out[101] = out[101], out[100]
			return out
		}()},
		{"move one to the end", func() []string {
			out := append(append([]string(nil), lines[:7]...), lines[8:]...)
			return append(out, lines[7])
		}()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			last, err := Verify(strings.NewReader(strings.Join(tc.lines, "")))
			if tc.name == "delete last" {
				// Truncation at the end leaves a valid, shorter chain; it
				// shows as a lower last seq than the writer's.
				if err != nil || last.Seq != 9_999 {
					t.Fatalf("last seq %d, err %v", last.Seq, err)
				}
				return
			}
			if !errors.Is(err, ErrBroken) {
				t.Fatalf("Verify = %v, want ErrBroken", err)
			}
		})
	}
}

func TestOpenFileContinuesChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	for range 3 {
		l, c, err := OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			if err := l.Record(context.Background(), broker.Event{Type: "x"}); err != nil {
				t.Fatal(err)
			}
		}
		c.Close()
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	last, err := Verify(f)
	if err != nil || last.Seq != 15 {
		t.Fatalf("last seq %d, err %v", last.Seq, err)
	}
}

func TestOpenFileRefusesBrokenChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	lines := trail(t, 3)
	lines[1] = strings.Replace(lines[1], "agent-a", "agent-z", 1)
	if err := os.WriteFile(path, []byte(strings.Join(lines, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := OpenFile(path); !errors.Is(err, ErrBroken) {
		t.Fatalf("OpenFile = %v, want ErrBroken", err)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRecordReportsWriteFailure(t *testing.T) {
	l := NewLog(failingWriter{})
	if err := l.Record(context.Background(), broker.Event{Type: "x"}); err == nil {
		t.Fatal("Record on a failing writer succeeded")
	}
}

// TestConcurrentRecordsToFile: group-committed records from many goroutines
// still form one intact chain in the file.
func TestConcurrentRecordsToFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	l, c, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 16, 25
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := range each {
				if err := l.Record(context.Background(), broker.Event{Type: "task.granted", TaskID: fmt.Sprintf("tsk_%d_%d", w, i)}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	last, err := Verify(f)
	if err != nil || last.Seq != workers*each {
		t.Fatalf("Verify = seq %d, %v; want seq %d", last.Seq, err, workers*each)
	}
}

// TestSyncFailureIsSticky: after a failed fsync nobody can know what reached
// the disk, so every later Record fails as well.
func TestSyncFailureIsSticky(t *testing.T) {
	var buf bytes.Buffer
	l := NewLog(&buf)
	l.sync = func() error { return errors.New("input/output error") }
	if err := l.Record(context.Background(), broker.Event{Type: "x"}); err == nil {
		t.Fatal("Record succeeded although its fsync failed")
	}
	l.sync = func() error { return nil }
	if err := l.Record(context.Background(), broker.Event{Type: "y"}); err == nil {
		t.Fatal("Record succeeded after an earlier fsync failed")
	}
}
