package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// TestRecordBoundsAttackerText guards issue 9 #1: every string an attacker
// can influence (request id, reasons, intent, tools, selectors, nested
// detail of any type) is cut before it is written, so no event becomes a
// multi-megabyte audit line. Before the fix a 1 MB value was written whole.
func TestRecordBoundsAttackerText(t *testing.T) {
	huge := strings.Repeat("A", 1<<20)
	tools := make([]string, 10_000)
	for i := range tools {
		tools[i] = fmt.Sprintf("tool.%d.%s", i, strings.Repeat("x", 200))
	}
	type act struct {
		Sub string `json:"sub"`
	}
	nested := map[string]any{"a": map[string]any{"b": map[string]any{"c": map[string]any{"d": map[string]any{"e": huge}}}}}
	wide := map[string]any{}
	for i := range 1000 {
		wide[fmt.Sprintf("k%04d", i)] = huge[:10]
	}
	cases := []struct {
		name string
		ev   broker.Event
		want string // a marker the written line must contain
	}{
		{"string fields", broker.Event{Type: "admin.denied", Actor: huge, Reason: huge, Rule: huge, Template: huge, Issuer: huge, TaskID: huge, Outcome: huge}, "bytes]"},
		{"intent and tools", broker.Event{Type: "task.denied", Detail: map[string]any{"intent": huge, "tools": tools}}, "items]"},
		{"credential ids", broker.Event{Type: "task.granted", Creds: tools}, "items]"},
		{"struct detail", broker.Event{Type: "token.exchanged", Detail: map[string]any{"act": act{Sub: huge}}}, "bytes]"},
		{"deep detail", broker.Event{Type: "x", Detail: nested}, "object of"},
		{"wide detail", broker.Event{Type: "x", Detail: wide}, "keys"},
		{"wide and long", broker.Event{Type: "x", Detail: map[string]any{"l1": tools, "l2": tools, "l3": tools, "l4": tools, "l5": tools, "l6": tools}}, "detail_sha256"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := NewLog(&buf).Record(context.Background(), tc.ev); err != nil {
				t.Fatal(err)
			}
			if n := buf.Len(); n > MaxEventBytes+1024 {
				t.Fatalf("audit line is %d bytes, want at most %d", n, MaxEventBytes+1024)
			}
			if !strings.Contains(buf.String(), tc.want) {
				t.Fatalf("line has no %q marker: %.300s", tc.want, buf.String())
			}
			if _, err := Verify(&buf); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRecordKeepsSmallEventsExact: bounding changes nothing that fits.
func TestRecordKeepsSmallEventsExact(t *testing.T) {
	var buf bytes.Buffer
	ev := broker.Event{Type: "task.granted", RequestID: "req-1", Creds: []string{"a", "b"},
		Detail: map[string]any{"intent": "triage ticket 4521", "tools": []string{"tickets.read"}, "ttl_seconds": 300, "big": int64(1) << 60}}
	if err := NewLog(&buf).Record(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	var rec Record
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	var got broker.Event
	if err := json.Unmarshal(rec.Event, &got); err != nil {
		t.Fatal(err)
	}
	if got.Detail["intent"] != "triage ticket 4521" || got.Detail["ttl_seconds"] != float64(300) || got.RequestID != "req-1" ||
		!strings.Contains(string(rec.Event), `"big":1152921504606846976`) {
		t.Fatalf("event changed: %s", rec.Event)
	}
}

// longLine writes a chain whose second record carries an event of n bytes,
// as a Valet before the bounds could write it.
func longLine(t *testing.T, path string, n int) {
	t.Helper()
	var buf bytes.Buffer
	l := NewLog(&buf)
	if err := l.Record(context.Background(), broker.Event{Type: "first"}); err != nil {
		t.Fatal(err)
	}
	ev, _ := json.Marshal(broker.Event{Type: "admin.denied", RequestID: strings.Repeat("R", n)})
	r := Record{Seq: 2, Prev: l.prev, Event: ev}
	r.Hash = hashOf(r)
	line, _ := json.Marshal(r)
	buf.Write(append(line, '\n'))
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestReaderTakesLongLines guards issue 9 #1: an audit line of any length
// that Valet wrote earlier (200 KB, and the 12 MB of the report, beyond the
// old reader's 4 MiB token limit) neither stops start-up (OpenFile) nor
// `valet audit verify` (Verify).
func TestReaderTakesLongLines(t *testing.T) {
	for _, n := range []int{200 << 10, 12 << 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			longLine(t, path, n)
			l, c, err := OpenFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Record(context.Background(), broker.Event{Type: "after"}); err != nil {
				t.Fatal(err)
			}
			c.Close()
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if last, err := Verify(f); err != nil || last.Seq != 3 {
				t.Fatalf("Verify = seq %d, %v; want 3, nil", last.Seq, err)
			}
		})
	}
}

// TestOpenFileBrokenChain guards issue 9 #1: a chain that does not verify
// at start-up is refused with the file, the line and the way forward, and
// the way forward (NewSegment) keeps the old file byte for byte, starts a
// new chain that records the break, and never overwrites an earlier
// segment.
func TestOpenFileBrokenChain(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	broken := func() []byte {
		lines := trail(t, 5)
		lines[2] = strings.Replace(lines[2], "agent-a", "agent-z", 1)
		b := []byte(strings.Join(lines, "") + "\n")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return b
	}
	orig := broken()
	_, _, err := OpenFile(path)
	var bf *BrokenFileError
	var br *BreakError
	if !errors.As(err, &bf) || !errors.As(err, &br) || br.Line != 3 || br.Seq != 3 {
		t.Fatalf("OpenFile = %v, want a BrokenFileError at line 3", err)
	}
	for _, want := range []string{path, "line 3", "--audit-new-segment", path + ".<n>"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, orig) {
		t.Fatal("a refused file was changed")
	}

	for n := 1; n <= 2; n++ {
		if n == 2 {
			orig = broken()
		}
		l, c, err := OpenFileWith(path, FileOptions{NewSegment: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Record(context.Background(), broker.Event{Type: "after"}); err != nil {
			t.Fatal(err)
		}
		c.Close()
		moved := fmt.Sprintf("%s.%d", path, n)
		if b, err := os.ReadFile(moved); err != nil || !bytes.Equal(b, orig) {
			t.Fatalf("segment %s is not the old file unchanged (err %v)", moved, err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if last, err := Verify(bytes.NewReader(b)); err != nil || last.Seq != 2 {
			t.Fatalf("new segment: seq %d, %v", last.Seq, err)
		}
		first := strings.SplitN(string(b), "\n", 2)[0]
		for _, want := range []string{`"audit.segment_started"`, `"previous_file":"` + moved + `"`, `"broken_line":3`, `"last_good_seq":2`} {
			if !strings.Contains(first, want) {
				t.Errorf("first record %s lacks %s", first, want)
			}
		}
	}
}
