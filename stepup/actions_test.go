package stepup

import (
	"encoding/json"
	"errors"
	"github.com/valet-dev/valet/internal/testkit"
	"slices"
	"strings"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// TestActionRequestToolNames: an action request names its tool by the one
// tool-name grammar of templates (issue 9, low); the same hostile names as
// broker's TestClientToolNamesFollowTheTemplateGrammar are refused, naming
// the field, without echoing a raw control or zero-width character.
func TestActionRequestToolNames(t *testing.T) {
	hostile := append(slices.Clone(testkit.HostileToolNames), struct{ Name, Tool string }{"empty", ""})
	for _, tc := range hostile {
		t.Run(tc.Name, func(t *testing.T) {
			body, _ := json.Marshal(map[string]any{"tool": tc.Tool, "args": map[string]any{}})
			_, err := DecodeActionRequest(strings.NewReader(string(body)))
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != broker.CodeInvalid || e.Field != "tool" {
				t.Fatalf("err = %#v, want a 400 naming tool", err)
			}
			if strings.ContainsAny(e.Message, "\x1b\x00\n\u200b") {
				t.Fatalf("message echoes a raw control or zero-width character: %q", e.Message)
			}
		})
	}
	a, err := DecodeActionRequest(strings.NewReader(`{"tool":"github:repo/issues.write","args":{"b":1,"a":"x"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Args) != `{"a":"x","b":1}` {
		t.Fatalf("args = %s, want their canonical form", a.Args)
	}
}
