package policy

import (
	"github.com/valet-dev/valet/internal/testkit"
	"testing"
)

// hostileToolNames are tool names a client may send that the template
// grammar refuses: each must be refused wherever a client names a tool,
// before any pattern match (issue 9, low). Before, declarations, token
// exchanges, action requests and event reports only checked length and
// UTF-8, so "kb.*" (a literal granted by the template pattern kb.*),
// "kb..x", names with spaces, controls or zero-width characters passed.
var hostileToolNames = testkit.HostileToolNames

func TestValidToolName(t *testing.T) {
	for _, tc := range hostileToolNames {
		if ValidToolName(tc.Tool) {
			t.Errorf("%s: ValidToolName(%q) = true", tc.Name, tc.Tool)
		}
	}
	for _, ok := range []string{"kb.search", "tickets.read", "github:repo/issues.write", "a_b-c", "x"} {
		if !ValidToolName(ok) {
			t.Errorf("ValidToolName(%q) = false", ok)
		}
	}
}

// TestAllowsToolRefusesInvalidNames: the one pattern matcher refuses every
// name outside the grammar, whatever path it came by ("kb.*" used to
// match the pattern "kb.*" as a literal name).
func TestAllowsToolRefusesInvalidNames(t *testing.T) {
	tmpl := &Template{Tools: []string{"kb.*", "tickets.read"}}
	for _, tc := range hostileToolNames {
		if tmpl.AllowsTool(tc.Tool) {
			t.Errorf("%s: AllowsTool(%q) = true", tc.Name, tc.Tool)
		}
	}
	if !tmpl.AllowsTool("kb.search") || !tmpl.AllowsTool("tickets.read") {
		t.Fatal("valid names refused")
	}
}
