package revocation_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/conformance"
)

// TestControlsRecoverWhenRedisAnswers guards issue 9 #14: after an outage
// the cached controls stayed failed until the next periodic refresh, so
// declarations kept answering 503 for 1 to 4 s after Redis was healthy.
// Now the first Check after Redis answers again reloads at once. The
// refresh interval here is an hour, so only that can make it pass.
func TestControlsRecoverWhenRedisAnswers(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t, redistest.WithAOF())
	c := newClient(t, srv.URL())
	s, err := revocation.NewControls(c, "valet", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	freeze := broker.Control{Kind: broker.ControlFreezeAgent, Target: "agent-7", Reason: "test", At: time.Now()}
	if err := s.Put(ctx, freeze); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	s.Reload(ctx) // a refresh during the outage fails
	if _, err := s.Check(ctx, "i", "agent-1", "t"); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Check during the outage: %v, want ErrUnavailable", err)
	}
	srv.Restart()
	got, err := s.Check(ctx, "i", "agent-7", "t")
	if err != nil || got == nil || got.Target != "agent-7" {
		t.Fatalf("first Check after Redis is back: %v %v, want the freeze", got, err)
	}
	if got, err := s.Check(ctx, "i", "agent-1", "t"); err != nil || got != nil {
		t.Fatalf("Check of another agent: %v %v", got, err)
	}
}

// TestControlsSurviveDataLoss guards issue 9 #9 for controls: a freeze
// lost with Redis's data used to lapse silently. Each replica's cache is
// written back when the refresh sees the generation change.
func TestControlsSurviveDataLoss(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t) // no persistence
	c := newClient(t, srv.URL())
	l := newRedisLedger(t, c, revocation.RedisOptions{})
	if err := l.Ping(ctx); err != nil { // the ledger starts the generation
		t.Fatal(err)
	}
	s, err := revocation.NewControls(c, "valet", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	freeze := broker.Control{Kind: broker.ControlFreezeAgent, Target: "agent-7", Reason: "test", At: time.Now()}
	if err := s.Put(ctx, freeze); err != nil {
		t.Fatal(err)
	}
	srv.Restart() // empty
	s.Reload(ctx)
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 || list[0].Target != "agent-7" {
		t.Fatalf("controls in Redis after the loss: %v %v, want the freeze written back", list, err)
	}
	// A second store (a replica started after the loss) reads it.
	s2, _ := revocation.NewControls(newClient(t, srv.URL()), "valet", time.Hour)
	if got, err := s2.Check(ctx, "i", "agent-7", "t"); err != nil || got == nil {
		t.Fatalf("a new replica's Check: %v %v", got, err)
	}
}

func TestRedisControlsConformance(t *testing.T) {
	srv := redistest.Start(t)
	var n atomic.Int64
	conformance.Controls(t, func(t *testing.T) (broker.ControlStore, broker.ControlStore) {
		prefix := fmt.Sprint("ctl", n.Add(1))
		replica := func() broker.ControlStore {
			// An hour's refresh: only the change notices keep a replica fresh.
			s, err := revocation.NewControls(newClient(t, srv.URL()), prefix, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); s.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			return s
		}
		a, b := replica(), replica()
		// Both are subscribed to change notices before the case starts
		// (a change made earlier reaches a replica only by its refresh).
		c := newClient(t, srv.URL())
		testkit.Eventually(t, func() bool {
			subs, err := c.PubSubNumSub(t.Context(), prefix+":controls:changed").Result()
			if err != nil {
				t.Fatal(err)
			}
			return subs[prefix+":controls:changed"] == 2
		}, "both replicas to subscribe to change notices")
		return a, b
	})
}

// TestControlsOnTheFeed guards the feed's side of controls: Put and Delete
// used to change only the controls hash and tell the replicas, so tool
// servers following the revocation feed never heard of a freeze. Now the
// same script publishes a control entry (a lift only when there was one),
// and the snapshot lists the controls in force.
func TestControlsOnTheFeed(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := newClient(t, srv.URL())
	l := newRedisLedger(t, c, revocation.RedisOptions{Prefix: "feedctl"})
	feed := l.Feed()
	s, err := revocation.NewControls(c, "feedctl", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, cursor, err := feed.Snapshot(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	freeze := broker.Control{Kind: broker.ControlFreezeAgent, Target: "agent-7", Issuer: "corp", Reason: "test", At: time.Now()}
	quarantine := broker.Control{Kind: broker.ControlQuarantineTemplate, Target: "deploy", Reason: "test", At: time.Now()}
	for _, ctl := range []broker.Control{freeze, quarantine} {
		if err := s.Put(ctx, ctl); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := s.Delete(ctx, quarantine); err != nil || !ok {
		t.Fatalf("Delete: %v %v", ok, err)
	}
	if ok, err := s.Delete(ctx, quarantine); err != nil || ok { // nothing to lift: no entry
		t.Fatalf("second Delete: %v %v", ok, err)
	}
	entries, _, err := feed.Follow(ctx, cursor, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		kind           broker.ControlKind
		target, issuer string
		active         bool
	}
	var got []seen
	for _, e := range entries {
		if e.Control == nil {
			t.Fatalf("unexpected entry %+v", e)
		}
		got = append(got, seen{e.Control.Kind, e.Control.Target, e.Control.Issuer, e.ControlActive})
	}
	want := []seen{
		{broker.ControlFreezeAgent, "agent-7", "corp", true},
		{broker.ControlQuarantineTemplate, "deploy", "", true},
		{broker.ControlQuarantineTemplate, "deploy", "", false},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("feed entries = %v, want %v", got, want)
	}
	snap, _, err := feed.Snapshot(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var inForce []seen
	for _, e := range snap {
		if e.Control != nil {
			inForce = append(inForce, seen{e.Control.Kind, e.Control.Target, e.Control.Issuer, e.ControlActive})
		}
	}
	if fmt.Sprint(inForce) != fmt.Sprint(want[:1]) {
		t.Fatalf("snapshot controls = %v, want %v", inForce, want[:1])
	}
	if ttl := c.PTTL(ctx, "feedctl:revocations").Val(); ttl <= 0 {
		t.Fatalf("feed stream TTL = %v, want one (it must not outlive its entries forever)", ttl)
	}
}
