package reconcile_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/reconcile"
	"github.com/valet-dev/valet/revocation"
)

// flakyIssuer revokes only while up; it records what it was asked.
type flakyIssuer struct {
	kind    broker.CredentialKind
	mu      sync.Mutex
	up      bool
	revoked []string
	live    []broker.Credential // what Live lists (inventoryIssuer)
}

func (f *flakyIssuer) Kind() broker.CredentialKind { return f.kind }
func (f *flakyIssuer) Mint(context.Context, broker.Task, broker.Principal, broker.Grant) ([]broker.Minted, error) {
	return nil, nil
}
func (f *flakyIssuer) Revoke(_ context.Context, c broker.Credential) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.up {
		return broker.ErrUnavailable
	}
	f.revoked = append(f.revoked, c.ID)
	return nil
}
func (f *flakyIssuer) setUp(up bool) { f.mu.Lock(); f.up = up; f.mu.Unlock() }
func (f *flakyIssuer) revokedIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.revoked...)
}

// outlivingIssuer is a flakyIssuer whose credentials stay live at their
// source past their recorded expiry (as a database login does).
type outlivingIssuer struct{ *flakyIssuer }

func (outlivingIssuer) OutlivesExpiry(broker.Credential) bool { return true }

// eventLog is an Auditor that keeps the events.
type eventLog struct {
	mu     sync.Mutex
	events []broker.Event
}

func (l *eventLog) Record(_ context.Context, e broker.Event) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
	return nil
}

func (l *eventLog) count(typ, cred string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.events {
		if e.Type == typ && len(e.Creds) == 1 && e.Creds[0] == cred {
			n++
		}
	}
	return n
}

type noIdentity struct{}

func (noIdentity) Authenticate(context.Context, string) (broker.Principal, error) {
	return broker.Principal{}, errors.New("no identity in this test")
}

// world is a real Service (JWT task tokens, memory ledger, memory queue)
// with one extra issuer, and the clock and audit they share.
type world struct {
	clock  *testkit.Clock
	svc    *broker.Service
	ledger *revocation.MemoryLedger
	queue  *revocation.MemoryQueue
	tokens *issuers.JWT
	audit  *eventLog
	extra  broker.Issuer
}

func newWorld(t *testing.T, extra broker.Issuer, withQueue bool) *world {
	t.Helper()
	w := &world{clock: testkit.NewClock(time.Now()), audit: &eventLog{}, extra: extra}
	w.ledger = revocation.NewMemoryLedger(w.clock.Now, time.Hour)
	k, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	if w.tokens, err = issuers.NewJWT(issuers.JWTConfig{Issuer: "https://valet.test", Keys: []issuers.SigningKey{{Private: k}}}, w.clock.Now); err != nil {
		t.Fatal(err)
	}
	set, err := policy.Load(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := broker.Config{Identity: noIdentity{}, Tokens: w.tokens, Issuers: []broker.Issuer{extra}, Ledger: w.ledger,
		Auditor: w.audit, Templates: set, Now: w.clock.Now}
	if withQueue {
		w.queue = revocation.NewMemoryQueue(w.clock.Now, time.Hour)
		cfg.RevocationQueue = w.queue
	}
	if w.svc, err = broker.NewService(cfg); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *world) retrier(t *testing.T) *reconcile.Retrier {
	t.Helper()
	r, err := reconcile.NewRetrier(reconcile.RetrierConfig{Queue: w.queue, Issuers: []broker.Issuer{w.tokens, w.extra},
		Auditor: w.audit, Now: w.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// entry is the queue's entry for id, if any.
func (w *world) entry(t *testing.T, id string) (broker.PendingRevocation, bool) {
	t.Helper()
	all, err := w.queue.Due(context.Background(), w.clock.Now().Add(24*time.Hour), 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range all {
		if p.ID == id {
			return p, true
		}
	}
	return broker.PendingRevocation{}, false
}

func TestBackoffBounds(t *testing.T) {
	for attempt := 1; attempt <= 40; attempt++ {
		want := min(time.Second<<min(attempt-1, 10), time.Minute)
		for range 50 {
			d := broker.Backoff(attempt)
			if d < want/2 || d > want {
				t.Fatalf("Backoff(%d) = %v, want within [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

// TestRetryPolicy: a failed revocation is queued, retried with growing
// waits while the source is down, revoked once it is back, and dropped as
// "expired unrevoked" when the credential's own expiry comes first.
func TestRetryPolicy(t *testing.T) {
	is := &flakyIssuer{kind: broker.KindVaultToken}
	w := newWorld(t, is, true)
	r := w.retrier(t)
	ctx := context.Background()
	now := w.clock.Now()
	a := broker.Credential{ID: "acc-a", Kind: broker.KindVaultToken, TaskID: "tsk_a", ExpiresAt: now.Add(time.Hour)}
	b := broker.Credential{ID: "acc-b", Kind: broker.KindVaultToken, TaskID: "tsk_b", ExpiresAt: now.Add(90 * time.Second)}
	jwt := broker.Credential{ID: "jti", Kind: broker.KindJWT, TaskID: "tsk_a", ExpiresAt: now.Add(time.Hour)}
	lease := broker.Credential{ID: "lease", Kind: broker.KindVaultLease, TaskID: "tsk_a", Parent: "acc-a", ExpiresAt: now.Add(time.Hour)}

	if failed := w.svc.RevokeAtSource(ctx, []broker.Credential{jwt, a, lease, b}, "test"); failed != 2 {
		t.Fatalf("RevokeAtSource failed %d, want 2 (JWT and lease need nothing here)", failed)
	}
	if n, _ := w.queue.Pending(ctx); n != 2 {
		t.Fatalf("pending = %d", n)
	}
	if n, err := r.Once(ctx); n != 0 || err != nil {
		t.Fatalf("Once before any backoff passed = %d, %v", n, err)
	}
	var lastNext time.Time
	for attempt := 1; attempt <= 5; attempt++ {
		w.clock.Advance(time.Minute)
		if n, err := r.Once(ctx); n != 0 || err != nil {
			t.Fatalf("Once with the source down = %d, %v", n, err)
		}
		p, _ := w.entry(t, "acc-a")
		if p.Attempt != attempt+1 || !p.Next.After(w.clock.Now()) || p.LastError == "" {
			t.Fatalf("after retry %d: %+v", attempt, p)
		}
		lastNext = p.Next
	}
	if d := lastNext.Sub(w.clock.Now()); d < 16*time.Second || d > 32*time.Second {
		t.Fatalf("after 6 attempts the wait is %v; want 32s jittered to [16s, 32s]", d)
	}
	if _, ok := w.entry(t, "acc-b"); ok {
		t.Fatal("acc-b, past its expiry, is still queued")
	}
	is.setUp(true)
	w.clock.Advance(time.Minute)
	if n, err := r.Once(ctx); n != 1 || err != nil {
		t.Fatalf("Once with the source back = %d, %v", n, err)
	}
	if got := is.revokedIDs(); len(got) != 1 || got[0] != "acc-a" {
		t.Fatalf("revoked %v", got)
	}
	if st := w.svc.Stats(); st.Failed != 2 || st.Queued != 2 || st.QueueFailed != 0 {
		t.Fatalf("service stats = %+v", st)
	}
	if st := r.Stats(); st.RetryFailed != 6 || st.Retried != 1 || st.ExpiredUnrevoked != 1 {
		t.Fatalf("retrier stats = %+v", st)
	}
	if n, _ := w.queue.Pending(ctx); n != 0 {
		t.Fatalf("pending = %d", n)
	}
	// Audited: each first failure, and acc-b dropped unrevoked.
	if a, b := w.audit.count("revocation.failed", "acc-a"), w.audit.count("revocation.failed", "acc-b"); a != 1 || b != 2 {
		t.Fatalf("revocation.failed events: acc-a %d, acc-b %d; want 1 and 2", a, b)
	}
}

// TestRevocationWithoutQueue: with no queue a failure is counted as lost,
// and a retrier cannot be built.
func TestRevocationWithoutQueue(t *testing.T) {
	w := newWorld(t, &flakyIssuer{kind: broker.KindVaultToken}, false)
	w.svc.RevokeAtSource(context.Background(), []broker.Credential{{ID: "a", Kind: broker.KindVaultToken, ExpiresAt: time.Now().Add(time.Hour)}}, "test")
	if st := w.svc.Stats(); st.Failed != 1 || st.QueueFailed != 1 {
		t.Fatalf("stats = %+v", st)
	}
	if _, err := reconcile.NewRetrier(reconcile.RetrierConfig{Auditor: w.audit}); err == nil {
		t.Fatal("NewRetrier accepted no queue")
	}
	if !errors.Is(&broker.NotRevokedError{Err: broker.ErrUnavailable}, broker.ErrUnavailable) {
		t.Fatal("NotRevokedError does not unwrap")
	}
}

// TestRetryPastExpiry: a credential that can outlive its recorded expiry at
// its source (OutlivesExpiry) is not dropped at that expiry: it is retried,
// and every failed attempt past it is audited, until it is revoked.
func TestRetryPastExpiry(t *testing.T) {
	is := outlivingIssuer{&flakyIssuer{kind: broker.KindVaultLease}}
	w := newWorld(t, is, true)
	r := w.retrier(t)
	ctx := context.Background()
	lease := broker.Credential{ID: "lease", Kind: broker.KindVaultLease, TaskID: "tsk_a", ExpiresAt: w.clock.Now().Add(30 * time.Second)}
	if failed := w.svc.RevokeAtSource(ctx, []broker.Credential{lease}, "test"); failed != 1 {
		t.Fatalf("RevokeAtSource failed %d", failed)
	}
	for range 3 {
		w.clock.Advance(2 * time.Minute)
		if n, err := r.Once(ctx); n != 0 || err != nil {
			t.Fatalf("Once with the source down = %d, %v", n, err)
		}
		if _, ok := w.entry(t, "lease"); !ok {
			t.Fatal("dropped at its recorded expiry while still live at its source")
		}
	}
	if n := w.audit.count("revocation.failed", "lease"); n != 4 {
		t.Fatalf("%d revocation.failed events; want the first failure and 3 past the expiry", n)
	}
	is.setUp(true)
	w.clock.Advance(2 * time.Minute)
	if n, err := r.Once(ctx); n != 1 || err != nil {
		t.Fatalf("Once with the source back = %d, %v", n, err)
	}
	if st := r.Stats(); st.ExpiredUnrevoked != 0 || st.Retried != 1 {
		t.Fatalf("stats = %+v", st)
	}
}
