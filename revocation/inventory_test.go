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

// TestRedisInventoryDownIsUnavailable: with Redis gone every call fails at
// once with broker.ErrUnavailable (the admin API's 503), never a hang.
func TestRedisInventoryDownIsUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	c := newClient(t, srv.URL())
	s, err := revocation.NewRedisInventory(c, "down", inventoryRetention, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := s.Record(ctx, []inventory.Seen{{Issuer: "idp", Subject: "a", At: time.Now()}}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Record = %v, want ErrUnavailable", err)
	}
	if _, err := s.List(ctx, inventory.Query{}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("List = %v, want ErrUnavailable", err)
	}
	if _, err := s.Agent(ctx, inventory.ID("idp", "a")); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Agent = %v, want ErrUnavailable", err)
	}
}
