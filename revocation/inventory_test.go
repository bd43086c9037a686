package revocation_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/inventory"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/conformance"
)

const inventoryRetention = time.Hour

func TestMemoryInventory(t *testing.T) {
	conformance.Inventory(t, func(t *testing.T, clock *conformance.Clock) inventory.Store {
		return revocation.NewMemoryInventory(clock.Now, inventoryRetention)
	}, inventoryRetention)
}

func TestRedisInventory(t *testing.T) {
	c := newClient(t, redistest.Start(t).URL())
	var n atomic.Int64
	conformance.Inventory(t, func(t *testing.T, clock *conformance.Clock) inventory.Store {
		s, err := revocation.NewRedisInventory(c, fmt.Sprint("inv", n.Add(1)), inventoryRetention, clock.Now)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, inventoryRetention)
}

// TestRedisInventoryKeysExpire: every agent hash expires at last seen plus
// the retention, by Redis's own clock.
func TestRedisInventoryKeysExpire(t *testing.T) {
	c := newClient(t, redistest.Start(t).URL())
	s, err := revocation.NewRedisInventory(c, "exp", inventoryRetention, nil)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := s.Record(t.Context(), []inventory.Seen{{Issuer: "idp", Subject: "a", Template: "deploy", At: at}}); err != nil {
		t.Fatal(err)
	}
	ttl, err := c.PTTL(t.Context(), "exp:{inv}:agent:"+inventory.ID("idp", "a")).Result()
	if err != nil || ttl <= 0 || ttl > inventoryRetention {
		t.Errorf("PTTL = %v, %v; want (0, %v]", ttl, err, inventoryRetention)
	}
}
