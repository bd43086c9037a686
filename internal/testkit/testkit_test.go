package testkit

import (
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestClock(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	c := NewClock(t0)
	if !c.Now().Equal(t0) {
		t.Fatalf("Now = %v, want %v", c.Now(), t0)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); c.Advance(time.Second); _ = c.Now() }()
	}
	wg.Wait()
	if got := c.Now().Sub(t0); got != 8*time.Second {
		t.Fatalf("advanced %v, want 8s", got)
	}
	c.Set(t0)
	if !c.Now().Equal(t0) {
		t.Fatalf("after Set: %v", c.Now())
	}
}

func TestEventually(t *testing.T) {
	var n atomic.Int32
	go func() { time.Sleep(30 * time.Millisecond); n.Store(1) }()
	Eventually(t, func() bool { return n.Load() == 1 }, "the flag")
}

func TestFreePort(t *testing.T) {
	addr := FreeAddr(t)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	defer ln.Close()
	if _, err := strconv.Atoi(addr[len("127.0.0.1:"):]); err != nil {
		t.Fatalf("addr %q: %v", addr, err)
	}
}
