// Package testkit owns the small helpers every test shares: the one fake
// clock, the one bounded Eventually, and the one free loopback port.
package testkit

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// Clock is a settable fake clock; tests move it instead of sleeping. It is
// safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock returns a clock that reads t until moved.
func NewClock(t time.Time) *Clock { return &Clock{now: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// EventuallyTimeout bounds how long Eventually waits.
const EventuallyTimeout = 10 * time.Second

// Eventually polls cond, for real background work, until it holds; the test
// fails with what (the condition awaited) if it does not within
// EventuallyTimeout.
func Eventually(t testing.TB, cond func() bool, what string) {
	t.Helper()
	EventuallyWithin(t, EventuallyTimeout, cond, what)
}

// EventuallyWithin is Eventually with its own bound, for slow work (a child
// process starting).
func EventuallyWithin(t testing.TB, limit time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s, still waiting for %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// FreePort returns a loopback TCP port that was free a moment ago. Another
// process may take it before it is bound, so starters retry.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// FreeAddr is FreePort as a "127.0.0.1:port" address, failing the test if
// no port can be had.
func FreeAddr(t testing.TB) string {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatalf("free loopback port: %v", err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}
