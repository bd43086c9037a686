package toolevents

import (
	"errors"
	"github.com/valet-dev/valet/internal/testkit"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// TestEventReportRefusesInvalidToolNames: an event report naming a tool
// outside the template grammar is a 400 naming the field "tool" (issue 9,
// low: reports used to check only length and UTF-8). The names are those
// of broker's TestClientToolNamesFollowTheTemplateGrammar.
func TestEventReportRefusesInvalidToolNames(t *testing.T) {
	for _, tc := range testkit.HostileToolNames {
		t.Run(tc.Name, func(t *testing.T) {
			err := EventReport{Tool: tc.Tool, Outcome: "ok"}.validate()
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
