package inventory_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/inventory"
	"github.com/valet-dev/valet/revocation"
)

func newLabeler(t testing.TB) *inventory.Labeler {
	t.Helper()
	l, err := inventory.NewLabeler("inventory.labels", []inventory.LabelRule{{Name: "owner", Value: "claims.team"}, {Name: "env", Value: `"prod"`}})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func agent(sub, team string) broker.Principal {
	return broker.Principal{Issuer: "idp", Subject: sub, Claims: map[string]any{"sub": sub, "team": team}}
}

// TestRecorderWritesSightingsWithLabels: sightings reach the store when
// Run flushes them, with labels from the claims of the latest one.
func TestRecorderWritesSightingsWithLabels(t *testing.T) {
	now := time.Now().Truncate(time.Millisecond).UTC()
	store := revocation.NewMemoryInventory(func() time.Time { return now }, time.Hour)
	r, err := inventory.NewRecorder(inventory.RecorderConfig{Store: store, Labels: newLabeler(t), Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r.Saw(agent("bot", "payments"), "deploy", now.Add(-time.Minute))
	r.Saw(agent("bot", "search"), "deploy", now)
	r.Saw(agent("bot", "search"), "triage", now.Add(-time.Second))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	cancel() // Run writes what it holds before it returns
	<-done
	a, err := store.Agent(t.Context(), inventory.ID("idp", "bot"))
	if err != nil {
		t.Fatal(err)
	}
	if !a.FirstSeen.Equal(now.Add(-time.Minute)) || !a.LastSeen.Equal(now) || a.Labels["owner"] != "search" || a.Labels["env"] != "prod" ||
		strings.Join(a.Templates, ",") != "deploy,triage" {
		t.Errorf("agent = %+v", a)
	}
	if r.Lost() != 0 {
		t.Errorf("Lost = %d, want 0", r.Lost())
	}
}

// TestRecorderDropsWhenFullAndCounts: with the buffer full Saw returns at
// once and counts the drop.
func TestRecorderDropsWhenFullAndCounts(t *testing.T) {
	r, err := inventory.NewRecorder(inventory.RecorderConfig{Store: revocation.NewMemoryInventory(nil, 0), Buffer: 2})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		r.Saw(agent("bot", "x"), "deploy", time.Now())
	}
	if r.Lost() != 3 {
		t.Errorf("Lost = %d, want 3", r.Lost())
	}
}

type failingStore struct{ inventory.Store }

func (failingStore) Record(context.Context, []inventory.Seen) error { return broker.ErrUnavailable }

// TestRecorderCountsFailedWritesAsLost: a write the store refuses loses
// its sightings, counted.
func TestRecorderCountsFailedWritesAsLost(t *testing.T) {
	r, err := inventory.NewRecorder(inventory.RecorderConfig{Store: failingStore{}, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	r.Saw(agent("a", "x"), "deploy", time.Now())
	r.Saw(agent("b", "x"), "deploy", time.Now())
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	r.Run(ctx)
	if r.Lost() != 2 {
		t.Errorf("Lost = %d, want 2", r.Lost())
	}
}

// TestRecorderFlushesOnItsInterval: a running recorder writes within its
// interval without being stopped.
func TestRecorderFlushesOnItsInterval(t *testing.T) {
	store := revocation.NewMemoryInventory(nil, 0)
	r, err := inventory.NewRecorder(inventory.RecorderConfig{Store: store, Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(t.Context())
	wg.Go(func() { r.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	r.Saw(agent("bot", "x"), "deploy", time.Now())
	testkit.Eventually(t, func() bool {
		_, err := store.Agent(t.Context(), inventory.ID("idp", "bot"))
		return err == nil
	}, "the sighting was never written")
}

func TestNewRecorderNeedsAStore(t *testing.T) {
	if _, err := inventory.NewRecorder(inventory.RecorderConfig{}); err == nil {
		t.Error("NewRecorder without a store = nil error")
	}
}

// TestLabelerReportsEveryRuleProblemWithItsPath: all problems at once, each
// at its config path.
func TestLabelerReportsEveryRuleProblemWithItsPath(t *testing.T) {
	_, err := inventory.NewLabeler("inventory.labels", []inventory.LabelRule{
		{Name: "Owner", Value: "claims.team"},
		{Name: "team", Value: "claims.team +"},
		{Name: "n", Value: "1 + 2"},
		{Name: "ok", Value: "claims.team"},
		{Name: "ok", Value: "claims.team"},
	})
	if err == nil {
		t.Fatal("NewLabeler = nil error")
	}
	for _, want := range []string{"inventory.labels[0].name", "inventory.labels[1].value", "inventory.labels[2].value: expression must evaluate to string", "inventory.labels[4].name: label \"ok\" is defined twice"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestLabelsSkipMissingAndUnprintable: a claim the token lacks, or a value
// with control characters, sets no label.
func TestLabelsSkipMissingAndUnprintable(t *testing.T) {
	l := newLabeler(t)
	if got := l.Labels(map[string]any{"sub": "x"}); got["owner"] != "" || got["env"] != "prod" {
		t.Errorf("labels without team = %v", got)
	}
	if got := l.Labels(map[string]any{"team": "evil\x1b[31m"}); got["owner"] != "" {
		t.Errorf("labels with an escape = %v", got)
	}
	if got := l.Labels(map[string]any{"team": 7}); got["owner"] != "" {
		t.Errorf("labels with a numeric team = %v", got)
	}
	cc, err := inventory.NewLabeler("inventory.labels", []inventory.LabelRule{{Name: "cost_center", Value: `claims.org + "/" + claims.cc`}})
	if err != nil {
		t.Fatal(err)
	}
	if got := cc.Labels(map[string]any{"org": "fin", "cc": "42"}); got["cost_center"] != "fin/42" {
		t.Errorf("concatenated label = %v", got)
	}
	var none *inventory.Labeler
	if none.Labels(map[string]any{"team": "x"}) != nil {
		t.Error("a nil labeler set labels")
	}
}

// BenchmarkSaw is the hot call on the declaration path (goal: <200 ns/op,
// 0 allocs), with the writer running.
func BenchmarkSaw(b *testing.B) {
	r, err := inventory.NewRecorder(inventory.RecorderConfig{Store: revocation.NewMemoryInventory(nil, 0), Labels: newLabeler(b)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	go r.Run(ctx)
	p := agent("bot", "payments")
	at := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r.Saw(p, "deploy", at)
	}
}
