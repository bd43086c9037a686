package incident

import (
	"errors"
	"strings"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// TestValidateControl: a control names a known kind and a 1 to 256
// character target; only a freeze narrows to an issuer; a too long reason
// is refused. Each refusal is a 400 naming its field.
func TestValidateControl(t *testing.T) {
	for _, c := range []struct {
		name      string
		c         broker.Control
		wantField string
	}{
		{"freeze", broker.Control{Kind: broker.ControlFreezeAgent, Target: "agent-a", Issuer: "test"}, ""},
		{"quarantine", broker.Control{Kind: broker.ControlQuarantineTemplate, Target: "triage"}, ""},
		{"unknown kind", broker.Control{Kind: "ban", Target: "agent-a"}, "kind"},
		{"no target", broker.Control{Kind: broker.ControlDistrustIssuer}, "target"},
		{"long target", broker.Control{Kind: broker.ControlDistrustIssuer, Target: strings.Repeat("x", 257)}, "target"},
		{"issuer on a quarantine", broker.Control{Kind: broker.ControlQuarantineTemplate, Target: "triage", Issuer: "test"}, "issuer"},
		{"long reason", broker.Control{Kind: broker.ControlFreezeAgent, Target: "agent-a", Reason: strings.Repeat("r", 1025)}, "reason"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := ValidateControl(c.c)
			if c.wantField == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != broker.CodeInvalid || e.Field != c.wantField {
				t.Fatalf("err = %#v, want a 400 naming %s", err, c.wantField)
			}
		})
	}
}
