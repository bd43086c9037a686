package revocation_test

import (
	"strconv"
	"testing"

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
