package reconcile_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/reconcile"
)

// inventoryIssuer is a flakyIssuer that lists its live credentials
// (broker.SourceInventory), as the Vault issuer does.
type inventoryIssuer struct{ *flakyIssuer }

func (i inventoryIssuer) Live(context.Context) ([]broker.Credential, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return slices.Clone(i.live), nil
}

// record puts an active task with creds in the world's ledger.
func (w *world) record(t *testing.T, id string, ttl time.Duration, creds ...broker.Credential) broker.Task {
	t.Helper()
	now := w.clock.Now()
	task := broker.Task{ID: id, State: broker.StateActive, Agent: "agent-7", Issuer: "test", Template: "t", Intent: "test",
		Tools: []string{"x"}, CreatedAt: now, Deadline: now.Add(ttl)}
	for i := range creds {
		creds[i].TaskID, creds[i].IssuedAt = id, now
		if creds[i].ExpiresAt.IsZero() {
			creds[i].ExpiresAt = task.Deadline
		}
	}
	if err := w.ledger.Record(context.Background(), task, creds); err != nil {
		t.Fatal(err)
	}
	return task
}

// TestReconcilerRevokesWhatTheLedgerDoesNotKnow: of the credentials live
// at a source, those of an unknown task, of an ended task, or missing from
// their task's record are revoked; recorded ones and young ones are not. A
// revocation that fails is not counted and goes to the retry queue.
func TestReconcilerRevokesWhatTheLedgerDoesNotKnow(t *testing.T) {
	is := inventoryIssuer{&flakyIssuer{kind: broker.KindVaultToken, up: true}}
	w := newWorld(t, is, true)
	ctx := context.Background()
	kept := broker.Credential{ID: "acc-kept", Kind: broker.KindVaultToken}
	w.record(t, "tsk_live", time.Hour, kept)
	ended := broker.Credential{ID: "acc-ended", Kind: broker.KindVaultToken}
	w.record(t, "tsk_ended", time.Hour, ended)
	if _, _, err := w.ledger.End(ctx, "tsk_ended", broker.StateCompleted, "test", w.clock.Now()); err != nil {
		t.Fatal(err)
	}
	start := w.clock.Now()
	exp := start.Add(time.Hour)
	is.live = []broker.Credential{
		{ID: "acc-kept", Kind: broker.KindVaultToken, ExpiresAt: exp, TaskID: "tsk_live", IssuedAt: start},
		{ID: "acc-ended", Kind: broker.KindVaultToken, ExpiresAt: exp, TaskID: "tsk_ended", IssuedAt: start},
		{ID: "acc-unknown", Kind: broker.KindVaultToken, ExpiresAt: exp, TaskID: "tsk_never", IssuedAt: start},
		{ID: "acc-unlisted", Kind: broker.KindVaultToken, ExpiresAt: exp, TaskID: "tsk_live", IssuedAt: start},
	}
	r, err := reconcile.NewReconciler(reconcile.ReconcilerConfig{Sources: []broker.Issuer{is}, Revoker: w.svc, Ledger: w.ledger,
		Grace: time.Minute, Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := r.Once(ctx); n != 0 || err != nil {
		t.Fatalf("Once within the grace = %d, %v", n, err)
	}
	w.clock.Advance(2 * time.Minute)
	is.live = append(is.live, broker.Credential{ID: "acc-young", Kind: broker.KindVaultToken, TaskID: "tsk_never", IssuedAt: w.clock.Now()})
	if n, err := r.Once(ctx); n != 3 || err != nil {
		t.Fatalf("Once = %d, %v; want 3", n, err)
	}
	got := is.revokedIDs()
	slices.Sort(got)
	if want := []string{"acc-ended", "acc-unknown", "acc-unlisted"}; !slices.Equal(got, want) {
		t.Fatalf("revoked %v, want %v", got, want)
	}
	if st := r.Stats(); st.Reconciled != 3 {
		t.Fatalf("stats = %+v", st)
	}

	is.setUp(false)
	if n, err := r.Once(ctx); n != 0 || err != nil {
		t.Fatalf("Once with the source down = %d, %v", n, err)
	}
	if st := r.Stats(); st.Reconciled != 3 {
		t.Fatalf("a failed revocation was counted: %+v", st)
	}
	if _, ok := w.entry(t, "acc-unknown"); !ok {
		t.Fatal("the failed orphan revocation is not queued for retry")
	}
	if w.audit.count("revocation.failed", "acc-unknown") != 1 {
		t.Fatal("the failed orphan revocation is not audited")
	}
}

// TestReaperEndsDueTasks: a task past its deadline is ended in the ledger,
// its Vault credential revoked at its source, the batch audited and its
// lag observed; a task still within its deadline is left alone.
func TestReaperEndsDueTasks(t *testing.T) {
	is := &flakyIssuer{kind: broker.KindVaultToken, up: true}
	w := newWorld(t, is, true)
	ctx := context.Background()
	w.record(t, "tsk_due", time.Minute, broker.Credential{ID: "acc-due", Kind: broker.KindVaultToken})
	w.record(t, "tsk_later", time.Hour, broker.Credential{ID: "acc-later", Kind: broker.KindVaultToken})
	var lags []time.Duration
	rp, err := reconcile.NewReaper(reconcile.ReaperConfig{Core: w.svc, Ledger: w.ledger, Auditor: w.audit,
		Lag: func(d time.Duration) { lags = append(lags, d) }, Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := rp.Once(ctx); n != 0 || err != nil {
		t.Fatalf("Once before any deadline = %d, %v", n, err)
	}
	w.clock.Advance(90 * time.Second)
	if n, err := rp.Once(ctx); n != 1 || err != nil {
		t.Fatalf("Once = %d, %v; want 1", n, err)
	}
	if got := is.revokedIDs(); !slices.Equal(got, []string{"acc-due"}) {
		t.Fatalf("revoked %v", got)
	}
	for id, want := range map[string]broker.State{"tsk_due": broker.StateExpired, "tsk_later": broker.StateActive} {
		if task, _, err := w.ledger.Task(ctx, id); err != nil || task.State != want {
			t.Fatalf("%s: state %q, %v; want %q", id, task.State, err, want)
		}
	}
	if len(lags) != 1 || lags[0] < 30*time.Second || lags[0] > 31*time.Second {
		t.Fatalf("lags %v, want 30s (give or take the ledger's millisecond deadlines)", lags)
	}
	var expired []broker.Event
	for _, e := range w.audit.events {
		if e.Type == "task.expired" {
			expired = append(expired, e)
		}
	}
	if len(expired) != 1 || expired[0].TaskID != "tsk_due" || !slices.Equal(expired[0].Creds, []string{"acc-due"}) {
		t.Fatalf("task.expired events: %+v", expired)
	}
	if n, err := rp.Once(ctx); n != 0 || err != nil {
		t.Fatalf("a second Once = %d, %v; the task was ended twice", n, err)
	}
	if _, err := reconcile.NewReaper(reconcile.ReaperConfig{Ledger: w.ledger, Auditor: w.audit}); err == nil {
		t.Fatal("NewReaper accepted no core")
	}
}
