package incident

import (
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// A delegated child of agent-a's on-behalf-of task for user-u, handed to
// agent-b of issuer other.
var chainChild = broker.Task{
	ID: "tsk_child", State: broker.StateActive, Agent: "agent-b", Issuer: "other", Template: "gate",
	Subject: "user-u", SubjectIssuer: "test", Act: []string{"agent-b", "agent-a"},
	Chain: []broker.Link{{Agent: "agent-a", Issuer: "test"}, {Agent: "agent-b", Issuer: "other"}},
}

// TestSelectorMatchesWhatEpochsCover guards issue 9 finding 2 (bulk jobs):
// a job's selector picks every task its epochs cover, through the whole
// chain and the user, so {"agent":"user-u"} no longer answers "0 tasks
// matched" while its epoch makes the task inactive.
func TestSelectorMatchesWhatEpochsCover(t *testing.T) {
	issuers := []string{"test", "other"}
	at := time.Unix(1_800_000_000, 0)
	covered := func(sel Selector) bool {
		eps := map[broker.Epoch]bool{}
		for _, e := range broker.EpochsOfLinks(chainChild.Links(), chainChild.Template) {
			eps[e] = true
		}
		for _, e := range sel.Epochs(issuers, at) {
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
