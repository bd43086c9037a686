package wire

import (
	"encoding/json"
	"errors"
	"github.com/valet-dev/valet/internal/testkit"
	"strings"
	"testing"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// hostileToolNames are tool names a client may send that the template
// grammar refuses: each must be refused wherever a client names a tool,
// before any pattern match (issue 9, low); package delegation tests the
// token exchange's tools the same way. Before, declarations, token
// exchanges, action requests (tested in stepup) and event reports (in
// toolevents) only checked length and UTF-8, so "kb.*" (a literal granted
// by the template pattern kb.*), "kb..x", names with spaces, controls or
// zero-width characters passed.
var hostileToolNames = testkit.HostileToolNames

func wantToolField(t *testing.T, err error, field string) {
	t.Helper()
	var e *broker.Error
	if !errors.As(err, &e) || e.Code != broker.CodeInvalid || e.Field != field {
		t.Fatalf("err = %#v, want a 400 naming %s", err, field)
	}
	if strings.ContainsAny(e.Message, "\x1b\x00\n\u200b") {
		t.Fatalf("message echoes a raw control or zero-width character: %q", e.Message)
	}
}

func TestClientToolNamesFollowTheTemplateGrammar(t *testing.T) {
	for _, tc := range hostileToolNames {
		t.Run(tc.Name, func(t *testing.T) {
			if policy.ValidToolName(tc.Tool) {
				t.Fatalf("policy.ValidToolName(%q) = true", tc.Tool)
			}
			t.Run("declaration", func(t *testing.T) {
				body, _ := json.Marshal(map[string]any{"template": "t", "intent": "do it", "tools": []string{"kb.search", "x", "y", tc.Tool}})
				_, err := DecodeDeclaration(strings.NewReader(string(body)))
				wantToolField(t, err, "tools[3]")
			})
		})
	}
	// Valid names still pass everywhere.
	for _, ok := range []string{"kb.search", "tickets.read", "github:repo/issues.write", "a_b-c", "x"} {
		if !policy.ValidToolName(ok) {
			t.Errorf("policy.ValidToolName(%q) = false", ok)
		}
	}
	if _, err := DecodeDeclaration(strings.NewReader(`{"template":"t","intent":"do it","tools":["kb.search","github:repo/issues.write"]}`)); err != nil {
		t.Fatal(err)
	}
}
