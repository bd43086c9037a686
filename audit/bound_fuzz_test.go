package audit

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/valet-dev/valet/broker"
)

// FuzzRecordBounded: whatever strings an event carries, the line written
// is at most MaxEventBytes plus the record's overhead, and it verifies.
func FuzzRecordBounded(f *testing.F) {
	f.Add("req-1", "triage", "tickets.read", 3)
	f.Add(strings.Repeat("é", 5000), "\x1b[31m", strings.Repeat("t", 2000), 300)
	f.Fuzz(func(t *testing.T, rid, reason, tool string, n int) {
		if n < 0 || n > 2000 {
			n = 2000
		}
		tools := make([]string, n)
		for i := range tools {
			tools[i] = tool
		}
		var buf bytes.Buffer
		ev := broker.Event{Type: "x", RequestID: rid, Reason: reason, Detail: map[string]any{"tools": tools, "intent": reason + tool}}
		if err := NewLog(&buf).Record(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
		if buf.Len() > MaxEventBytes+1024 {
			t.Fatalf("line of %d bytes", buf.Len())
		}
		if _, err := Verify(&buf); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzBound: Bound keeps valid UTF-8 valid and never returns more than n
// bytes of the input plus its marker.
func FuzzBound(f *testing.F) {
	f.Add("héllo wörld", 3)
	f.Fuzz(func(t *testing.T, s string, n int) {
		if n < 0 || n > 1<<16 {
			return
		}
		got := broker.Bound(s, n)
		if len(s) <= n && got != s {
			t.Fatalf("Bound changed a string that fits")
		}
		if len(s) > n && (!strings.HasPrefix(s, strings.SplitN(got, "…[+", 2)[0]) || len(got) > n+len("…[+ bytes]")+20) {
			t.Fatalf("Bound(%q, %d) = %q", s, n, got)
		}
		if utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatalf("Bound broke UTF-8: %q", got)
		}
	})
}
