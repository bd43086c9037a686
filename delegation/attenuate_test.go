package delegation

import (
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// TestAttenuateSensitiveToolsAndScopes guards issue 9 finding 5 and the
// low finding on scopes: a sensitive tool passes to a child only when the
// parent holds it (into ActionTools, never Tools), and a child that asks
// for no scope gets the parent's.
func TestAttenuateSensitiveToolsAndScopes(t *testing.T) {
	tmpl := &policy.Template{Name: "gate", Tools: []string{"tickets.read"}, Audiences: []string{"https://tools"},
		Scopes: []string{"tickets:read", "tickets:write"}, MaxTTL: time.Hour,
		Delegation: &policy.DelegationPolicy{MaxDepth: 3},
		Sensitive:  []policy.SensitiveTool{{Tool: "kb.delete", Rule: policy.RulePolicy}}}
	now := time.Unix(1_800_000_000, 0)
	parent := ParentGrant{Tools: []string{"tickets.read"}, Audiences: []string{"https://tools"},
		Scopes: []string{"tickets:read"}, Deadline: now.Add(time.Hour)}
	req, err := DecodeTokenExchange(url.Values{"grant_type": {GrantTypeTokenExchange}, "subject_token": {"x"},
		"subject_token_type": {TokenTypeAccessToken}, "actor_token": {"y"}, "actor_token_type": {TokenTypeIDToken},
		"tools": {"tickets.read kb.delete"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := Attenuate(tmpl, parent, req, now); broker.ErrorCode(err) != broker.CodeForbidden {
		t.Fatalf("a sensitive tool the parent does not hold: %v", err)
	}
	parent.ActionTools = []string{"kb.delete"}
	g, _, err := Attenuate(tmpl, parent, req, now)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(g.Tools, []string{"tickets.read"}) || !slices.Equal(g.ActionTools, []string{"kb.delete"}) {
		t.Fatalf("tools %v action tools %v", g.Tools, g.ActionTools)
	}
	if !slices.Equal(g.Scopes, []string{"tickets:read"}) {
		t.Fatalf("a child without scope got %v, want the parent's", g.Scopes)
	}
}
