package toolevents

import (
	"errors"
	"strings"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// TestEventReportRefusesInvalidToolNames: an event report naming a tool
// outside the template grammar is a 400 naming the field "tool" (issue 9,
// low: reports used to check only length and UTF-8). The names are those
// of broker's TestClientToolNamesFollowTheTemplateGrammar.
func TestEventReportRefusesInvalidToolNames(t *testing.T) {
	for _, tc := range []struct{ name, tool string }{
		{"star", "kb.*"},
		{"bare star", "*"},
		{"dot dot", "kb..search"},
		{"path climb", "kb/../admin"},
		{"space", "kb search"},
		{"leading space", " kb.search"},
		{"tab", "kb.search\t"},
		{"newline", "kb.search\nforged line"},
		{"ANSI escape", "kb.\x1b[31msearch"},
		{"NUL", "kb.search\x00"},
		{"zero-width space", "kb.se\u200barch"},
		{"zero-width joiner", "kb.search\u200d"},
		{"BOM", "\ufeffkb.search"},
		{"Cyrillic look-alike", "kb.sеarch"},
		{"full-width", "ｋｂ.search"},
		{"leading dot", ".kb"},
		{"leading dash", "-kb"},
		{"too long", strings.Repeat("a", 129)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := EventReport{Tool: tc.tool, Outcome: "ok"}.validate()
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != broker.CodeInvalid || e.Field != "tool" {
				t.Fatalf("err = %#v, want a 400 naming tool", err)
			}
		})
	}
	for _, ok := range []string{"kb.search", "tickets.read", "github:repo/issues.write", "a_b-c", "x"} {
		if err := (EventReport{Tool: ok, Outcome: "ok"}).validate(); err != nil {
			t.Errorf("a report of %q: %v", ok, err)
		}
	}
}

// TestNewNamesMissingDependencies: every missing dependency is named.
func TestNewNamesMissingDependencies(t *testing.T) {
	if _, err := New(Config{}); err == nil || err.Error() != "toolevents: core, clients, tokens, ledger, auditor cannot be nil" {
		t.Fatalf("empty config: %v", err)
	}
}
