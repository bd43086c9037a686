package conformance

import (
	"errors"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// epochLedger is a ledger that keeps epochs beside its records.
type epochLedger interface {
	broker.Ledger
	broker.EpochStore
}

type epochEnv struct {
	ledgerEnv
	s epochLedger
}

// epochCases are the rules of broker.EpochStore, one function each.
var epochCases = []namedCase[epochEnv]{
	{"StatusIsCredentialAndDeny", statusIsCredentialAndDeny},
	{"EpochsMoveOnlyForward", epochsMoveOnlyForward},
	{"StatusTakesLatestOfItsEpochs", statusTakesLatestOfItsEpochs},
}

// before reads the latest Before CredentialStatus reports for id under
// epochs, or fails the test.
func (e epochEnv) before(t *testing.T, id string, epochs ...broker.Epoch) time.Time {
	t.Helper()
	_, _, before, err := e.s.CredentialStatus(e.ctx, id, epochs)
	if err != nil {
		t.Fatalf("CredentialStatus(%q): %v", id, err)
	}
	return before
}

func (e epochEnv) setEpoch(t *testing.T, ep broker.Epoch) {
	t.Helper()
	if err := e.s.SetEpoch(e.ctx, ep); err != nil {
		t.Fatalf("SetEpoch %s %s: %v", ep.Dimension, ep.Key, err)
	}
}

// statusIsCredentialAndDeny: CredentialStatus answers as Credential does
// (record, deny flag, ErrNotFound), with no epoch set reporting none.
func statusIsCredentialAndDeny(t *testing.T, e epochEnv) {
	task, creds := newTask(e.clock.Now(), "status", 1)
	e.record(t, task, creds)
	c, denied, before, err := e.s.CredentialStatus(e.ctx, creds[0].ID, nil)
	if err != nil || denied || !before.IsZero() {
		t.Fatalf("CredentialStatus = denied %v, before %v, %v; want live, no epoch", denied, before, err)
	}
	wantCreds(t, []broker.Credential{c}, creds)
	if _, _, err := e.l.End(e.ctx, task.ID, broker.StateRevoked, "test", e.clock.Now()); err != nil {
		t.Fatalf("End: %v", err)
	}
	if _, denied, _, err := e.s.CredentialStatus(e.ctx, creds[0].ID, nil); err != nil || !denied {
		t.Errorf("CredentialStatus after End = denied %v, %v; want denied", denied, err)
	}
	if _, _, _, err := e.s.CredentialStatus(e.ctx, "no-such-credential", nil); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("CredentialStatus(unknown): err = %v, want ErrNotFound", err)
	}
}

// epochsMoveOnlyForward: SetEpoch with an earlier Before than the one set
// changes nothing; a later one moves it.
func epochsMoveOnlyForward(t *testing.T, e epochEnv) {
	task, creds := newTask(e.clock.Now(), "forward", 1)
	e.record(t, task, creds)
	agent := broker.Epoch{Dimension: broker.DimAgent, Key: broker.AgentKey(task.Issuer, task.Agent)}
	t1 := e.clock.Now().Add(-time.Minute)
	steps := []struct {
		name      string
		set, want time.Time
	}{
		{"first", t1, t1},
		{"earlier is ignored", t1.Add(-30 * time.Second), t1},
		{"same is ignored", t1, t1},
		{"later moves it", t1.Add(30 * time.Second), t1.Add(30 * time.Second)},
	}
	for _, s := range steps {
		ep := agent
		ep.Before = s.set
		e.setEpoch(t, ep)
		if got := e.before(t, creds[0].ID, agent); !sameMs(got, s.want) {
			t.Errorf("%s: Before = %v, want %v", s.name, got, s.want)
		}
	}
}

// statusTakesLatestOfItsEpochs: the Before reported is the latest of the
// epochs asked about, and an epoch not asked about does not count.
func statusTakesLatestOfItsEpochs(t *testing.T, e epochEnv) {
	task, creds := newTask(e.clock.Now(), "latest", 1)
	e.record(t, task, creds)
	now := e.clock.Now()
	agent := broker.Epoch{Dimension: broker.DimAgent, Key: broker.AgentKey(task.Issuer, task.Agent), Before: now.Add(-2 * time.Minute)}
	template := broker.Epoch{Dimension: broker.DimTemplate, Key: task.Template, Before: now.Add(-time.Minute)}
	other := broker.Epoch{Dimension: broker.DimIssuer, Key: "someone-else", Before: now}
	for _, ep := range []broker.Epoch{agent, template, other} {
		e.setEpoch(t, ep)
	}
	issuer := broker.Epoch{Dimension: broker.DimIssuer, Key: task.Issuer}
	if got := e.before(t, creds[0].ID, agent, template, issuer); !sameMs(got, template.Before) {
		t.Errorf("Before of agent, template, issuer = %v, want the template's %v", got, template.Before)
	}
	if got := e.before(t, creds[0].ID, agent, issuer); !sameMs(got, agent.Before) {
		t.Errorf("Before of agent, issuer = %v, want the agent's %v", got, agent.Before)
	}
	if got := e.before(t, creds[0].ID, issuer); !got.IsZero() {
		t.Errorf("Before of an issuer with no epoch = %v, want none (another issuer's epoch counted)", got)
	}
}
