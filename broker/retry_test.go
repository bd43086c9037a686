package broker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/testkit"
)

func TestBackoffBounds(t *testing.T) {
	for attempt := 1; attempt <= 40; attempt++ {
		want := min(retryBase<<min(attempt-1, 10), retryCap)
		for range 50 {
			d := backoff(attempt)
			if d < want/2 || d > want {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempt, d, want/2, want)
			}
		}
	}
}

// flakyIssuer revokes only while up; it records what it was asked.
type flakyIssuer struct {
	mu      sync.Mutex
	up      bool
	revoked []string
}

func (f *flakyIssuer) Kind() CredentialKind { return KindVaultToken }
func (f *flakyIssuer) Mint(context.Context, Task, Principal, Grant) ([]Minted, error) {
	return nil, nil
}
func (f *flakyIssuer) Revoke(_ context.Context, c Credential) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.up {
		return ErrUnavailable
	}
	f.revoked = append(f.revoked, c.ID)
	return nil
}

// eventLog is an Auditor that keeps the events.
type eventLog struct {
	mu     sync.Mutex
	events []Event
}

func (l *eventLog) Record(_ context.Context, e Event) error {
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

// outlivingIssuer is a flakyIssuer whose credentials stay live at their
// source past their recorded expiry (as a database login does).
type outlivingIssuer struct{ flakyIssuer }

func (*outlivingIssuer) OutlivesExpiry(Credential) bool { return true }

// sliceQueue is the smallest RevocationQueue, so the retry policy can be
// tested inside the package (the real queues have their own conformance
// suite in revocation/conformance).
type sliceQueue struct {
	mu sync.Mutex
	m  map[string]PendingRevocation
}

func (q *sliceQueue) Enqueue(_ context.Context, c Credential, attempt int, next time.Time, lastErr string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.m[c.ID] = PendingRevocation{ID: c.ID, Credential: c, Attempt: attempt, Next: next, LastError: lastErr}
	return nil
}
func (q *sliceQueue) Due(_ context.Context, now time.Time, limit int) ([]PendingRevocation, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []PendingRevocation
	for _, p := range q.m {
		if !p.Next.After(now) && len(out) < limit {
			out = append(out, p)
		}
	}
	return out, nil
}
func (q *sliceQueue) Done(_ context.Context, id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.m, id)
	return nil
}
func (q *sliceQueue) Pending(context.Context) (int, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.m), nil
}

// TestRetryPolicy: a failed revocation is queued, retried with growing
// waits while the source is down, revoked once it is back, and dropped as
// "expired unrevoked" when the credential's own expiry comes first.
func TestRetryPolicy(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	is := &flakyIssuer{}
	q := &sliceQueue{m: map[string]PendingRevocation{}}
	al := &eventLog{}
	s := &Service{issuers: map[CredentialKind]Issuer{KindVaultToken: is}, retryQ: q, now: clock.Now,
		log: slog.New(slog.DiscardHandler), audit: al}
	ctx := context.Background()
	a := Credential{ID: "acc-a", Kind: KindVaultToken, TaskID: "tsk_a", ExpiresAt: clock.Now().Add(time.Hour)}
	b := Credential{ID: "acc-b", Kind: KindVaultToken, TaskID: "tsk_b", ExpiresAt: clock.Now().Add(90 * time.Second)}
	jwt := Credential{ID: "jti", Kind: KindJWT, TaskID: "tsk_a", ExpiresAt: clock.Now().Add(time.Hour)}
	lease := Credential{ID: "lease", Kind: KindVaultLease, TaskID: "tsk_a", Parent: "acc-a", ExpiresAt: clock.Now().Add(time.Hour)}

	if failed := s.revokeAtSource(ctx, []Credential{jwt, a, lease, b}, "test"); failed != 2 {
		t.Fatalf("revokeAtSource failed %d, want 2 (JWT and lease need nothing here)", failed)
	}
	if n, _ := q.Pending(ctx); n != 2 {
		t.Fatalf("pending = %d", n)
	}
	if n, err := s.RetryOnce(ctx); n != 0 || err != nil {
		t.Fatalf("RetryOnce before any backoff passed = %d, %v", n, err)
	}
	var lastNext time.Time
	for attempt := 1; attempt <= 5; attempt++ {
		clock.Advance(time.Minute)
		if n, err := s.RetryOnce(ctx); n != 0 || err != nil {
			t.Fatalf("RetryOnce with the source down = %d, %v", n, err)
		}
		p := q.m["acc-a"]
		if p.Attempt != attempt+1 || !p.Next.After(clock.Now()) || p.LastError == "" {
			t.Fatalf("after retry %d: %+v", attempt, p)
		}
		lastNext = p.Next
	}
	if w := lastNext.Sub(clock.Now()); w < 16*time.Second || w > 32*time.Second {
		t.Fatalf("after 6 attempts the wait is %v; want 32s jittered to [16s, 32s]", w)
	}
	if _, ok := q.m["acc-b"]; ok {
		t.Fatal("acc-b, past its expiry, is still queued")
	}
	is.up = true
	clock.Advance(time.Minute)
	if n, err := s.RetryOnce(ctx); n != 1 || err != nil {
		t.Fatalf("RetryOnce with the source back = %d, %v", n, err)
	}
	if len(is.revoked) != 1 || is.revoked[0] != "acc-a" {
		t.Fatalf("revoked %v", is.revoked)
	}
	st := s.Stats()
	if st.Failed != 2 || st.Queued != 2 || st.RetryFailed != 6 || st.Retried != 1 || st.ExpiredUnrevoked != 1 {
		t.Fatalf("stats = %+v", st)
	}
	if n, _ := q.Pending(ctx); n != 0 {
		t.Fatalf("pending = %d", n)
	}
	// Audited: each first failure, and acc-b dropped unrevoked.
	if a, b := al.count("revocation.failed", "acc-a"), al.count("revocation.failed", "acc-b"); a != 1 || b != 2 {
		t.Fatalf("revocation.failed events: acc-a %d, acc-b %d; want 1 and 2", a, b)
	}
}

// TestRevocationWithoutQueue: with no queue a failure is counted as lost.
func TestRevocationWithoutQueue(t *testing.T) {
	s := &Service{issuers: map[CredentialKind]Issuer{KindVaultToken: &flakyIssuer{}}, now: time.Now, log: slog.New(slog.DiscardHandler),
		audit: &eventLog{}}
	s.revokeAtSource(context.Background(), []Credential{{ID: "a", Kind: KindVaultToken, ExpiresAt: time.Now().Add(time.Hour)}}, "test")
	if st := s.Stats(); st.Failed != 1 || st.QueueFailed != 1 {
		t.Fatalf("stats = %+v", st)
	}
	if !errors.Is(&NotRevokedError{Err: ErrUnavailable}, ErrUnavailable) {
		t.Fatal("NotRevokedError does not unwrap")
	}
}

// TestRetryPastExpiry: a credential that can outlive its recorded expiry at
// its source (OutlivesExpiry) is not dropped at that expiry: it is retried,
// and every failed attempt past it is audited, until it is revoked.
func TestRetryPastExpiry(t *testing.T) {
	clock := testkit.NewClock(time.Now())
	is := &outlivingIssuer{}
	q := &sliceQueue{m: map[string]PendingRevocation{}}
	al := &eventLog{}
	s := &Service{issuers: map[CredentialKind]Issuer{KindVaultLease: is}, retryQ: q, now: clock.Now,
		log: slog.New(slog.DiscardHandler), audit: al}
	ctx := context.Background()
	lease := Credential{ID: "lease", Kind: KindVaultLease, TaskID: "tsk_a", ExpiresAt: clock.Now().Add(30 * time.Second)}
	if failed := s.revokeAtSource(ctx, []Credential{lease}, "test"); failed != 1 {
		t.Fatalf("revokeAtSource failed %d", failed)
	}
	for range 3 {
		clock.Advance(2 * time.Minute)
		if n, err := s.RetryOnce(ctx); n != 0 || err != nil {
			t.Fatalf("RetryOnce with the source down = %d, %v", n, err)
		}
		if _, ok := q.m["lease"]; !ok {
			t.Fatal("dropped at its recorded expiry while still live at its source")
		}
	}
	if n := al.count("revocation.failed", "lease"); n != 4 {
		t.Fatalf("%d revocation.failed events; want the first failure and 3 past the expiry", n)
	}
	is.up = true
	clock.Advance(2 * time.Minute)
	if n, err := s.RetryOnce(ctx); n != 1 || err != nil {
		t.Fatalf("RetryOnce with the source back = %d, %v", n, err)
	}
	if st := s.Stats(); st.ExpiredUnrevoked != 0 || st.Retried != 1 {
		t.Fatalf("stats = %+v", st)
	}
}
