package conformance

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
)

// NewControls returns two replicas of one empty control store, each kept
// fresh as in production (their refresh loops running until the test
// ends). It is called once per case.
type NewControls func(t *testing.T) (a, b broker.ControlStore)

type controlsEnv struct {
	ctx  context.Context
	a, b broker.ControlStore
	at   time.Time
}

// controlsCases are the rules of broker.ControlStore, one function each.
var controlsCases = []namedCase[controlsEnv]{
	{"NoControlsStopsNothing", noControlsStopsNothing},
	{"FreezeStopsThatAgentOnly", freezeStopsThatAgentOnly},
	{"FreezeNarrowedToOneIssuer", freezeNarrowedToOneIssuer},
	{"QuarantineAndDistrustStopTheirTargets", quarantineAndDistrustStopTheirTargets},
	{"PutAgainReplaces", putAgainReplaces},
	{"ListOrderedByID", listOrderedByID},
	{"DeleteSaysWhetherThereWasOne", deleteSaysWhetherThereWasOne},
	{"ReplicaSeesPutAndDelete", replicaSeesPutAndDelete},
}

// Controls runs the broker.ControlStore suite.
func Controls(t *testing.T, newControls NewControls) {
	run(t, controlsCases, func(t *testing.T) controlsEnv {
		a, b := newControls(t)
		return controlsEnv{ctx: t.Context(), a: a, b: b, at: time.Now().Truncate(time.Millisecond).UTC()}
	})
}

func (e controlsEnv) control(kind broker.ControlKind, target, issuer string) broker.Control {
	return broker.Control{Kind: kind, Target: target, Issuer: issuer, Reason: "incident 7", By: "admin", At: e.at}
}

// check is s.Check that fails the test on an error.
func (e controlsEnv) check(t *testing.T, s broker.ControlStore, issuer, subject, template string) *broker.Control {
	t.Helper()
	c, err := s.Check(e.ctx, issuer, subject, template)
	if err != nil {
		t.Fatalf("Check(%s, %s, %s): %v", issuer, subject, template, err)
	}
	return c
}

// noControlsStopsNothing: an empty store stops nothing and lists nothing.
func noControlsStopsNothing(t *testing.T, e controlsEnv) {
	if c := e.check(t, e.a, "idp", "agent", "deploy"); c != nil {
		t.Errorf("Check = %+v, want nil", c)
	}
	if list, err := e.a.List(e.ctx); err != nil || len(list) != 0 {
		t.Errorf("List = %v, %v; want none", list, err)
	}
}

// freezeStopsThatAgentOnly: a freeze without an issuer stops its subject
// under every issuer and template, and no one else.
func freezeStopsThatAgentOnly(t *testing.T, e controlsEnv) {
	freeze := e.control(broker.ControlFreezeAgent, "agent-7", "")
	must(t, e.a.Put(e.ctx, freeze))
	for _, issuer := range []string{"idp-a", "idp-b"} {
		if c := e.check(t, e.a, issuer, "agent-7", "deploy"); c == nil || c.ID() != freeze.ID() {
			t.Errorf("Check(%s, agent-7) = %+v, want the freeze", issuer, c)
		}
	}
	if c := e.check(t, e.a, "idp-a", "agent-1", "deploy"); c != nil {
		t.Errorf("Check(agent-1) = %+v, want nil", c)
	}
}

// freezeNarrowedToOneIssuer: a freeze with an issuer stops that issuer's
// agent only.
func freezeNarrowedToOneIssuer(t *testing.T, e controlsEnv) {
	must(t, e.a.Put(e.ctx, e.control(broker.ControlFreezeAgent, "agent-7", "idp-a")))
	if c := e.check(t, e.a, "idp-a", "agent-7", "deploy"); c == nil {
		t.Error("Check(idp-a, agent-7) = nil, want the freeze")
	}
	if c := e.check(t, e.a, "idp-b", "agent-7", "deploy"); c != nil {
		t.Errorf("Check(idp-b, agent-7) = %+v, want nil", c)
	}
}

// quarantineAndDistrustStopTheirTargets: a quarantine stops a template, a
// distrust an issuer.
func quarantineAndDistrustStopTheirTargets(t *testing.T, e controlsEnv) {
	must(t, e.a.Put(e.ctx, e.control(broker.ControlQuarantineTemplate, "deploy", "")))
	must(t, e.a.Put(e.ctx, e.control(broker.ControlDistrustIssuer, "idp-bad", "")))
	if c := e.check(t, e.a, "idp-a", "agent-1", "deploy"); c == nil || c.Kind != broker.ControlQuarantineTemplate {
		t.Errorf("Check(template deploy) = %+v, want the quarantine", c)
	}
	if c := e.check(t, e.a, "idp-bad", "agent-1", "audit"); c == nil || c.Kind != broker.ControlDistrustIssuer {
		t.Errorf("Check(issuer idp-bad) = %+v, want the distrust", c)
	}
	if c := e.check(t, e.a, "idp-a", "agent-1", "audit"); c != nil {
		t.Errorf("Check(idp-a, audit) = %+v, want nil", c)
	}
}

// putAgainReplaces: one control per kind, target and issuer; a second Put
// replaces it.
func putAgainReplaces(t *testing.T, e controlsEnv) {
	first := e.control(broker.ControlFreezeAgent, "agent-7", "")
	must(t, e.a.Put(e.ctx, first))
	second := first
	second.Reason = "still under investigation"
	must(t, e.a.Put(e.ctx, second))
	list, err := e.a.List(e.ctx)
	if err != nil || len(list) != 1 || list[0].Reason != second.Reason {
		t.Errorf("List = %+v, %v; want the one control with the second reason", list, err)
	}
}

// listOrderedByID: List returns every control, whole, ordered by id.
func listOrderedByID(t *testing.T, e controlsEnv) {
	want := []broker.Control{
		e.control(broker.ControlQuarantineTemplate, "deploy", ""),
		e.control(broker.ControlFreezeAgent, "agent-7", "idp-a"),
		e.control(broker.ControlDistrustIssuer, "idp-bad", ""),
	}
	for _, c := range want {
		must(t, e.a.Put(e.ctx, c))
	}
	slices.SortFunc(want, func(a, b broker.Control) int {
		switch {
		case a.ID() < b.ID():
			return -1
		case a.ID() > b.ID():
			return 1
		}
		return 0
	})
	got, err := e.a.List(e.ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	same := len(got) == len(want)
	for i := 0; same && i < len(got); i++ {
		g, w := got[i], want[i]
		same = g.ID() == w.ID() && g.Reason == w.Reason && g.By == w.By && g.At.Equal(w.At)
	}
	if !same {
		t.Errorf("List =\n %+v\nwant\n %+v", got, want)
	}
}

// deleteSaysWhetherThereWasOne: Delete removes a control (Check stops
// seeing it) and reports whether there was one.
func deleteSaysWhetherThereWasOne(t *testing.T, e controlsEnv) {
	freeze := e.control(broker.ControlFreezeAgent, "agent-7", "")
	must(t, e.a.Put(e.ctx, freeze))
	if ok, err := e.a.Delete(e.ctx, freeze); err != nil || !ok {
		t.Fatalf("Delete = %v, %v; want true", ok, err)
	}
	if c := e.check(t, e.a, "idp", "agent-7", "deploy"); c != nil {
		t.Errorf("Check after Delete = %+v, want nil", c)
	}
	if ok, err := e.a.Delete(e.ctx, freeze); err != nil || ok {
		t.Errorf("second Delete = %v, %v; want false", ok, err)
	}
}

// replicaSeesPutAndDelete: a control put or deleted on one replica is
// soon in force, or lifted, on the other.
func replicaSeesPutAndDelete(t *testing.T, e controlsEnv) {
	freeze := e.control(broker.ControlFreezeAgent, "agent-7", "")
	if c := e.check(t, e.b, "idp", "agent-7", "deploy"); c != nil {
		t.Fatalf("replica Check before Put = %+v", c)
	}
	must(t, e.a.Put(e.ctx, freeze))
	testkit.Eventually(t, func() bool { return e.check(t, e.b, "idp", "agent-7", "deploy") != nil }, "the replica sees the freeze")
	if _, err := e.a.Delete(e.ctx, freeze); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	testkit.Eventually(t, func() bool { return e.check(t, e.b, "idp", "agent-7", "deploy") == nil }, "the replica sees the freeze lifted")
}
