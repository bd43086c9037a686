package revocation_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/conformance"
)

func TestMemoryOAuthStoreConformance(t *testing.T) {
	conformance.OAuthStore(t, func(t *testing.T, clock *conformance.Clock) oauth.Store {
		return revocation.NewMemoryOAuthStore(clock.Now)
	}, conformance.Options{ClockDrivesExpiry: true, Retention: 1})
}

func TestRedisOAuthStoreConformance(t *testing.T) {
	srv := redistest.Start(t)
	n := 0
	conformance.OAuthStore(t, func(t *testing.T, _ *conformance.Clock) oauth.Store {
		n++
		c, err := revocation.NewClient(srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		s, err := revocation.NewRedisOAuthStore(c, "oauth"+strconv.Itoa(n))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, conformance.Options{RealClockExpiry: "RecordsExpire, waiting a real second"})
}

// TestMemoryOAuthStoreIsBounded: a flood of sign-ins fills the memory
// store to its bound and no further; expired records make room again.
func TestMemoryOAuthStoreIsBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	s := revocation.NewMemoryOAuthStore(func() time.Time { return now })
	ctx := context.Background()
	for i := range revocation.MaxMemoryOAuthRecords {
		if ok, err := s.Put(ctx, fmt.Sprintf("login:%d", i), []byte("{}"), now.Add(10*time.Minute)); !ok || err != nil {
			t.Fatalf("Put %d: %t %v", i, ok, err)
		}
	}
	if _, err := s.Put(ctx, "login:one-more", []byte("{}"), now.Add(10*time.Minute)); !errors.Is(err, revocation.ErrOAuthStoreFull) {
		t.Fatalf("Put into a full store: %v, want ErrOAuthStoreFull", err)
	}
	now = now.Add(10 * time.Minute)
	if ok, err := s.Put(ctx, "login:after", []byte("{}"), now.Add(10*time.Minute)); !ok || err != nil {
		t.Fatalf("Put once the flood expired: %t %v", ok, err)
	}
}
