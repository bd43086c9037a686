package broker

import (
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/valet-dev/valet/policy"
)

// A delegated child of agent-a's on-behalf-of task for user-u, handed to
// agent-b of issuer other.
var chainChild = Task{
	ID: "tsk_child", State: StateActive, Agent: "agent-b", Issuer: "other", Template: "gate",
	Subject: "user-u", SubjectIssuer: "test", Act: []string{"agent-b", "agent-a"},
	Chain: []Link{{Agent: "agent-a", Issuer: "test"}, {Agent: "agent-b", Issuer: "other"}},
}

// TestSelectorMatchesWhatEpochsCover guards issue 9 finding 2 (bulk jobs):
// a job's selector picks every task its epochs cover, through the whole
// chain and the user, so {"agent":"user-u"} no longer answers "0 tasks
// matched" while its epoch makes the task inactive.
func TestSelectorMatchesWhatEpochsCover(t *testing.T) {
	issuers := []string{"test", "other"}
	at := time.Unix(1_800_000_000, 0)
	covered := func(sel Selector) bool {
		eps := map[Epoch]bool{}
		for _, e := range epochsOfLinks(chainChild.Links(), chainChild.Template) {
			eps[e] = true
		}
		for _, e := range sel.epochs(issuers, at) {
			e.Before = time.Time{}
			if eps[e] {
				return true
			}
		}
		return false
	}
	cases := []struct {
		name string
		sel  Selector
		want bool
	}{
		{"user acted for", Selector{Agent: "user-u"}, true},
		{"user with its issuer", Selector{Agent: "user-u", Issuer: "test"}, true},
		{"user under another issuer", Selector{Agent: "user-u", Issuer: "other"}, false},
		{"root agent", Selector{Agent: "agent-a"}, true},
		{"sub-agent", Selector{Agent: "agent-b", Issuer: "other"}, true},
		{"root agent's issuer", Selector{Issuer: "test"}, true},
		{"sub-agent's issuer", Selector{Issuer: "other"}, true},
		{"template", Selector{Template: "gate"}, true},
		{"a stranger", Selector{Agent: "agent-z"}, false},
		{"another issuer", Selector{Issuer: "elsewhere"}, false},
		{"another template", Selector{Template: "triage"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.sel.Matches(chainChild); got != c.want {
				t.Errorf("Matches = %v, want %v", got, c.want)
			}
			if got := covered(c.sel); got != c.want {
				t.Errorf("the selector's epochs cover the task: %v, want %v", got, c.want)
			}
		})
	}
}

// TestLinksOfOlderRecords: a task recorded before Chain still names its
// root agent, every actor and its user.
func TestLinksOfOlderRecords(t *testing.T) {
	old := chainChild
	old.Chain = nil
	got := old.Links()
	want := []Link{{Agent: "agent-a", Issuer: "other"}, {Agent: "agent-b", Issuer: "other"}, {Agent: "user-u", Issuer: "test"}}
	if !slices.Equal(got, want) {
		t.Fatalf("Links = %v, want %v", got, want)
	}
	root := Task{Agent: "agent-a", Issuer: "test", Subject: "agent-a"}
	if got := root.Links(); !slices.Equal(got, []Link{{Agent: "agent-a", Issuer: "test"}}) {
		t.Fatalf("root Links = %v", got)
	}
}

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
	if _, _, err := Attenuate(tmpl, parent, req, now); ErrorCode(err) != CodeForbidden {
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
