package delegation

import (
	"errors"
	"github.com/valet-dev/valet/internal/testkit"
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
	hostile := testkit.HostileToolNames
	form := func(tools string) url.Values {
		return url.Values{"grant_type": {GrantTypeTokenExchange}, "subject_token": {"s"}, "subject_token_type": {TokenTypeAccessToken},
			"actor_token": {"a"}, "actor_token_type": {TokenTypeIDToken}, "tools": {tools}}
	}
	for _, tc := range hostile {
		t.Run(tc.Name, func(t *testing.T) {
			if strings.ContainsAny(tc.Tool, " \t\n") {
				t.Skip("whitespace separates the space-delimited tools parameter, so it cannot be inside one name")
			}
			_, err := DecodeTokenExchange(form("kb.search x " + tc.Tool))
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
