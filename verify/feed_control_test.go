package verify

import "testing"

// TestDenySetControls guards the verifier's side of controls on the feed:
// before, a feed-following verifier ignored freeze_agent,
// quarantine_template and distrust_issuer, so a frozen agent's live tokens
// kept being accepted unless the responder also revoked. It checks the
// broker.Control.Matches semantics over every link of the token (holder of
// agent_issuer, act chain, subject), the narrowing of a freeze to an
// issuer, the "ask Valet" answer for a link whose issuer the token does not
// name, lifting, and a snapshot replacing what a missed lift left behind.
func TestDenySetControls(t *testing.T) {
	direct := Claims{ID: "j1", TaskID: "t1", Subject: "bot", Template: "tpl", AgentIssuer: "idp"}
	obo := Claims{ID: "j2", TaskID: "t2", Subject: "alice", Act: []string{"sub", "root"}, Template: "tpl", AgentIssuer: "idp"}
	cases := []struct {
		name         string
		ctl          controlEntry
		c            Claims
		deny, unsure bool
	}{
		{"freeze holder", controlEntry{Kind: freezeAgent, Target: "bot"}, direct, true, false},
		{"freeze holder narrowed to its issuer", controlEntry{Kind: freezeAgent, Target: "bot", Issuer: "idp"}, direct, true, false},
		{"freeze holder narrowed to another issuer", controlEntry{Kind: freezeAgent, Target: "bot", Issuer: "other"}, direct, false, false},
		{"freeze other agent", controlEntry{Kind: freezeAgent, Target: "someone"}, direct, false, false},
		{"freeze holder in act", controlEntry{Kind: freezeAgent, Target: "sub", Issuer: "idp"}, obo, true, false},
		{"freeze root agent of the chain", controlEntry{Kind: freezeAgent, Target: "root"}, obo, true, false},
		{"freeze user the task acts for", controlEntry{Kind: freezeAgent, Target: "alice"}, obo, true, false},
		{"freeze user narrowed: issuer not in the token", controlEntry{Kind: freezeAgent, Target: "alice", Issuer: "users"}, obo, false, true},
		{"quarantine its template", controlEntry{Kind: quarantineTemplate, Target: "tpl"}, direct, true, false},
		{"quarantine another template", controlEntry{Kind: quarantineTemplate, Target: "x"}, direct, false, false},
		{"distrust agent_issuer", controlEntry{Kind: distrustIssuer, Target: "idp"}, obo, true, false},
		{"distrust another issuer, direct token", controlEntry{Kind: distrustIssuer, Target: "users"}, direct, false, false},
		{"distrust another issuer, chain of unnamed issuers", controlEntry{Kind: distrustIssuer, Target: "users"}, obo, false, true},
		{"unknown kind", controlEntry{Kind: "something_new", Target: "bot"}, direct, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := newDenySet()
			tc.ctl.Active = true
			d.applyControl(tc.ctl)
			deny, unsure := d.controlled(tc.c)
			if deny != tc.deny || unsure != tc.unsure {
				t.Fatalf("controlled = %v, %v; want %v, %v", deny, unsure, tc.deny, tc.unsure)
			}
			lifted := tc.ctl
			lifted.Active = false
			d.applyControl(lifted)
			if deny, unsure := d.controlled(tc.c); deny || unsure {
				t.Fatalf("after the lift: controlled = %v, %v", deny, unsure)
			}
		})
	}

	// A snapshot is the whole set in force: one missed lift is forgotten.
	d := newDenySet()
	d.applyControl(controlEntry{Kind: freezeAgent, Target: "bot", Active: true})
	d.setControls([]controlEntry{{Kind: quarantineTemplate, Target: "x", Active: true}})
	if deny, _ := d.controlled(direct); deny {
		t.Error("a control the snapshot no longer lists still denies")
	}
	d.setControls([]controlEntry{{Kind: quarantineTemplate, Target: "tpl", Active: true}})
	if deny, _ := d.controlled(direct); !deny {
		t.Error("a control the snapshot lists does not deny")
	}
}
