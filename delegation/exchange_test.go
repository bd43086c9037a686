package delegation

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// TestExchangeToolNamesFollowTheTemplateGrammar: a token exchange refuses
// every tool name the template grammar refuses, naming the entry, before
// any pattern match (issue 9, low), as declarations, action requests and
// event reports do (broker's TestClientToolNamesFollowTheTemplateGrammar).
func TestExchangeToolNamesFollowTheTemplateGrammar(t *testing.T) {
	hostile := []struct{ name, tool string }{
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
	}
	form := func(tools string) url.Values {
		return url.Values{"grant_type": {GrantTypeTokenExchange}, "subject_token": {"s"}, "subject_token_type": {TokenTypeAccessToken},
			"actor_token": {"a"}, "actor_token_type": {TokenTypeIDToken}, "tools": {tools}}
	}
	for _, tc := range hostile {
		t.Run(tc.name, func(t *testing.T) {
			if strings.ContainsAny(tc.tool, " \t\n") {
				t.Skip("whitespace separates the space-delimited tools parameter, so it cannot be inside one name")
			}
			_, err := DecodeTokenExchange(form("kb.search x " + tc.tool))
			var e *broker.Error
			if !errors.As(err, &e) || e.Code != broker.CodeInvalid || e.Field != "tools[2]" {
				t.Fatalf("err = %#v, want a 400 naming tools[2]", err)
			}
			if strings.ContainsAny(e.Message, "\x1b\x00\n\u200b") {
				t.Fatalf("message echoes a raw control or zero-width character: %q", e.Message)
			}
		})
	}
	if _, err := DecodeTokenExchange(form("kb.search github:repo/issues.write")); err != nil {
		t.Fatalf("valid tool names refused: %v", err)
	}
}
