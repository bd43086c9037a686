package identity

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/testkit"
)

func TestCacheRemembersAVerifiedTokenForItsLifeOnly(t *testing.T) {
	iss := oidctest.New(t)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(t, clock, devIssuer(iss))
	ctx := context.Background()
	tok := iss.Token(t, map[string]any{"exp": clock.Now().Add(2 * time.Minute).Unix()})
	p, err := id.Authenticate(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if id.cache.len() != 1 {
		t.Fatalf("cache holds %d tokens after one verification, want 1", id.cache.len())
	}
	// A caller annotating its principal does not change the next one.
	p.Claims["sub"] = "someone-else"
	again, err := id.Authenticate(ctx, tok)
	if err != nil || again.Subject != "agent-test" || again.Claims["sub"] != "agent-test" {
		t.Fatalf("cached principal: %v %v (%v)", again.Subject, again.Claims["sub"], err)
	}
	// Within the leeway after exp the token is still accepted, as by the
	// full check; past it the cache does not extend its life.
	clock.Advance(2*time.Minute + 20*time.Second)
	if _, err := id.Authenticate(ctx, tok); err != nil {
		t.Fatalf("within the leeway: %v", err)
	}
	clock.Advance(15 * time.Second)
	if _, err := id.Authenticate(ctx, tok); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("past exp + leeway: %v, want expired", err)
	}
	// Failures are not cached.
	if n := id.cache.len(); n != 0 {
		t.Fatalf("cache holds %d tokens after the only one expired, want 0", n)
	}
}

func TestCacheForgetsTokensOfARetiredKey(t *testing.T) {
	iss := oidctest.New(t)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(t, clock, devIssuer(iss))
	ctx := context.Background()
	old := iss.AddKey("ES256")
	clock.Advance(31 * time.Second)
	tok := iss.Token(t, nil, oidctest.WithKID(old))
	if _, err := id.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if _, err := id.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	// The issuer retires the key; the next refresh (here forced by a token
	// with a new kid) replaces the key set, and the cached verification of
	// the retired key's token is not used again.
	iss.RemoveKey(old)
	clock.Advance(31 * time.Second)
	fresh := iss.Token(t, nil, oidctest.WithKID(iss.AddKey("ES256")))
	if _, err := id.Authenticate(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	if _, err := id.Authenticate(ctx, tok); err == nil {
		t.Fatal("a token of a retired key was still accepted from the cache after the key set changed")
	}
}

func TestCacheIsBoundedAndPurged(t *testing.T) {
	iss := oidctest.New(t)
	clock := testkit.NewClock(time.Now())
	id, err := New(context.Background(), []IssuerConfig{devIssuer(iss)}, Options{Now: clock.Now, Logger: quietLogger(), CacheSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		if _, err := id.Authenticate(context.Background(), iss.Token(t, map[string]any{"sub": fmt.Sprintf("agent-%d", i)})); err != nil {
			t.Fatal(err)
		}
		if n := id.cache.len(); n > 64 {
			t.Fatalf("cache grew to %d entries, bound 64", n)
		}
	}
	id.Purge()
	if n := id.cache.len(); n != 0 {
		t.Fatalf("after Purge: %d entries", n)
	}
	off, err := New(context.Background(), []IssuerConfig{devIssuer(iss)}, Options{Now: clock.Now, Logger: quietLogger(), CacheSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := off.Authenticate(context.Background(), iss.Token(t, nil)); err != nil || off.cache.len() != 0 {
		t.Fatalf("cache off: %v, %d entries", err, off.cache.len())
	}
}

// BenchmarkAuthenticate compares a token seen for the first time with one
// an agent presents again (real agents present one workload token for many
// tasks).
func BenchmarkAuthenticate(b *testing.B) {
	iss := oidctest.New(b)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(b, clock, devIssuer(iss))
	ctx := context.Background()
	b.Run("distinct-tokens", func(b *testing.B) {
		toks := make([]string, b.N)
		for i := range toks {
			toks[i] = iss.Token(b, map[string]any{"sub": fmt.Sprintf("agent-%d", i)}, oidctest.WithAlg("ES256"))
		}
		id.Purge()
		b.ResetTimer()
		for i := range b.N {
			if _, err := id.Authenticate(ctx, toks[i]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reused-token", func(b *testing.B) {
		tok := iss.Token(b, nil, oidctest.WithAlg("ES256"))
		b.ResetTimer()
		for range b.N {
			if _, err := id.Authenticate(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestCacheStatsCountHitsAndMisses: the bench's hit ratio comes from
// CacheStats, so it must count a full check as a miss and a reuse as a hit.
func TestCacheStatsCountHitsAndMisses(t *testing.T) {
	iss := oidctest.New(t)
	clock := testkit.NewClock(time.Now())
	id := newTestIdentity(t, clock, devIssuer(iss))
	tok := iss.Token(t, map[string]any{"exp": clock.Now().Add(2 * time.Minute).Unix()})
	for range 3 {
		if _, err := id.Authenticate(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if hits, misses := id.CacheStats(); hits != 2 || misses != 1 {
		t.Fatalf("CacheStats = %d hits, %d misses; want 2, 1", hits, misses)
	}
}
