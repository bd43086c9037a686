package broker

import (
	"slices"
	"testing"
)

// A delegated child of agent-a's on-behalf-of task for user-u, handed to
// agent-b of issuer other.
var chainChild = Task{
	ID: "tsk_child", State: StateActive, Agent: "agent-b", Issuer: "other", Template: "gate",
	Subject: "user-u", SubjectIssuer: "test", Act: []string{"agent-b", "agent-a"},
	Chain: []Link{{Agent: "agent-a", Issuer: "test"}, {Agent: "agent-b", Issuer: "other"}},
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
