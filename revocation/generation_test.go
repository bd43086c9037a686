package revocation_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
)

// TestGenerationDetectsDataLoss guards issue 9 #9 at the ledger: after
// Redis restarted empty, a replica's Record used to write into the empty
// Redis as if nothing had happened, and nothing said that every deny entry
// and epoch was gone. Now Record refuses (ErrUnavailable) once, the new
// generation's global epoch covers every credential issued before it in
// CredentialStatus, another replica on the same Redis adopts the same
// generation and reports the loss too, and the feed snapshot carries the
// global epoch.
func TestGenerationDetectsDataLoss(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t) // no persistence
	c1 := newClient(t, srv.URL())
	c2 := newClient(t, srv.URL())
	a := newRedisLedger(t, c1, revocation.RedisOptions{})
	b := newRedisLedger(t, c2, revocation.RedisOptions{})

	now := time.Now()
	pre := activeTask("pre", now, time.Hour)
	if err := a.Record(ctx, pre, []broker.Credential{jwt(pre.ID, "jti-pre", now.Add(time.Hour))}); err != nil {
		t.Fatalf("Record before the loss: %v", err)
	}
	if err := b.Ping(ctx); err != nil { // b learns the generation
		t.Fatal(err)
	}
	if _, ok := a.LastLoss(); ok {
		t.Fatal("a loss reported before any")
	}

	srv.Restart()                               // empty
	minted := time.Now().Add(-time.Millisecond) // minted before the loss was noticed

	task := activeTask("during", minted, time.Hour)
	cred := broker.Credential{ID: "jti-during", Kind: broker.KindJWT, TaskID: task.ID, IssuedAt: minted, ExpiresAt: minted.Add(time.Hour)}
	err := a.Record(ctx, task, []broker.Credential{cred})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("first Record after the loss: %v, want ErrUnavailable", err)
	}
	loss, ok := a.LastLoss()
	if !ok || loss.Before.IsZero() || loss.Previous == "" || loss.Current == loss.Previous {
		t.Fatalf("LastLoss = %+v, %v", loss, ok)
	}
	if a.LossWarning() == "" {
		t.Fatal("no loss warning")
	}
	// A retry (a new declaration, minted anew) is taken, and its
	// credential is live: the global epoch spares what this generation
	// recorded.
	fresh := broker.Credential{ID: "jti-fresh", Kind: broker.KindJWT, TaskID: task.ID, IssuedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
	if err := a.Record(ctx, task, []broker.Credential{fresh}); err != nil {
		t.Fatalf("Record retried: %v", err)
	}
	if _, denied, before, err := a.CredentialStatus(ctx, fresh.ID, nil); err != nil || denied || !before.IsZero() {
		t.Fatalf("a credential of the new generation: denied %v, revoked-before %v, %v", denied, before, err)
	}
	if _, _, _, err := a.CredentialStatus(ctx, "jti-pre", nil); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("pre-loss record: %v, want ErrNotFound", err)
	}

	// The other replica sees the same loss on its next round trip.
	if _, err := b.Due(ctx, time.Now(), 10); err != nil {
		t.Fatal(err)
	}
	lb, ok := b.LastLoss()
	if !ok || lb.Current != loss.Current {
		t.Fatalf("replica b: %+v %v, want generation %s", lb, ok, loss.Current)
	}

	entries, _, err := a.Feed().Snapshot(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range entries {
		if e.Epoch != nil && e.Epoch.Dimension == revocation.DimAll && e.Epoch.Key == "*" && e.Epoch.Before.Equal(loss.Before.Truncate(time.Second)) {
			found = true
		}
	}
	if !found {
		t.Fatalf("feed snapshot lacks the global epoch %v: %+v", loss.Before, entries)
	}
}

// TestGenerationFirstStartIsNoLoss: a first start on an empty Redis sets
// a generation but reports no loss, and a replica joining adopts it.
func TestGenerationFirstStartIsNoLoss(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	a := newRedisLedger(t, newClient(t, srv.URL()), revocation.RedisOptions{})
	b := newRedisLedger(t, newClient(t, srv.URL()), revocation.RedisOptions{})
	now := time.Now()
	for i, l := range []*revocation.RedisLedger{a, b} {
		task := activeTask(string(rune('a'+i)), now, time.Hour)
		if err := l.Record(ctx, task, []broker.Credential{jwt(task.ID, "jti-"+task.ID, now.Add(time.Hour))}); err != nil {
			t.Fatalf("Record: %v", err)
		}
		if _, ok := l.LastLoss(); ok {
			t.Fatal("a first start reported as a loss")
		}
	}
}

// TestGenerationCoversSurvivingRecords: when the marker is lost but some
// records survive (eviction under maxmemory, a partial restore), the new
// generation's global epoch covers every credential recorded before it.
func TestGenerationCoversSurvivingRecords(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	c := newClient(t, srv.URL())
	l := newRedisLedger(t, c, revocation.RedisOptions{})
	now := time.Now()
	task := activeTask("old", now, time.Hour)
	if err := l.Record(ctx, task, []broker.Credential{jwt(task.ID, "jti-old", now.Add(time.Hour))}); err != nil {
		t.Fatal(err)
	}
	if err := c.Del(ctx, "valet:generation").Err(); err != nil { // the marker alone is evicted
		t.Fatal(err)
	}
	got, denied, before, err := l.CredentialStatus(ctx, "jti-old", nil)
	if err != nil {
		t.Fatalf("CredentialStatus: %v", err)
	}
	if denied || before.IsZero() || got.IssuedAt.After(before) {
		t.Fatalf("a surviving record of the old generation: denied %v, revoked-before %v, issued %v: not covered", denied, before, got.IssuedAt)
	}
	if _, ok := l.LastLoss(); !ok {
		t.Fatal("the loss is not reported")
	}
}
