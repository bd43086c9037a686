package incident

import (
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// TestLabelSelector: a label selector matches the tasks of the agents it
// resolved to (anywhere in the chain), and nothing when it resolved to
// none; alone it is the agents' epochs, with another dimension no epoch.
func TestLabelSelector(t *testing.T) {
	pay := Selector{Label: "owner=payments", Agents: []AgentRef{{Issuer: "other", Subject: "agent-b"}}}
	none := Selector{Label: "owner=nobody"}
	other := Selector{Label: "owner=payments", Agents: []AgentRef{{Issuer: "test", Subject: "agent-b"}}}
	for _, c := range []struct {
		name string
		sel  Selector
		want bool
	}{
		{"agent of the label in the chain", pay, true},
		{"label of no agent", none, false},
		{"same subject, another issuer", other, false},
	} {
		if got := c.sel.Matches(chainChild); got != c.want {
			t.Errorf("%s: Matches = %v, want %v", c.name, got, c.want)
		}
	}
	at := time.Unix(1_800_000_000, 0)
	if eps := pay.Epochs(nil, at); len(eps) != 1 || eps[0].Dimension != broker.DimAgent || eps[0].Key != broker.AgentKey("other", "agent-b") {
		t.Errorf("Epochs = %+v, want the agent's", eps)
	}
	withTemplate := pay
	withTemplate.Template = "gate"
	if eps := withTemplate.Epochs(nil, at); eps != nil {
		t.Errorf("Epochs with a template = %+v, want none (narrower than any epoch)", eps)
	}
}

func TestLabelSelectorValidate(t *testing.T) {
	for _, c := range []struct {
		name string
		sel  Selector
		ok   bool
	}{
		{"label alone", Selector{Label: "owner=payments"}, true},
		{"no value", Selector{Label: "owner="}, false},
		{"no key", Selector{Label: "=payments"}, false},
		{"no equals", Selector{Label: "owner"}, false},
		{"control character", Selector{Label: "owner=pay\x1b[2J"}, false},
		{"agents without label", Selector{Agents: []AgentRef{{Issuer: "i", Subject: "s"}}, Agent: "s"}, false},
		{"too many agents", Selector{Label: "a=b", Agents: make([]AgentRef, MaxLabelAgents+1)}, false},
	} {
		if err := c.sel.Validate(); (err == nil) != c.ok {
			t.Errorf("%s: Validate = %v, want ok %v", c.name, err, c.ok)
		}
	}
}
