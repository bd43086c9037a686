package throttle

import (
	"fmt"
	"testing"
	"time"
)

// TestThrottle guards issue 9 (low): failed client-secret attempts
// were never limited, so a client's secret could be guessed at line rate.
// After FailuresPerWindow failures an id waits out the window (also
// with the right secret, or the throttle would be an oracle); a flood of
// unknown ids is bounded in memory and cannot evict a configured id's
// count.
func TestThrottle(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	th := New([]string{"client:tool-server"})
	for i := range FailuresPerWindow {
		if w := th.Wait("client:tool-server", now); w != 0 {
			t.Fatalf("throttled after %d failures", i)
		}
		th.Fail("client:tool-server", now)
	}
	if w := th.Wait("client:tool-server", now.Add(10*time.Second)); w != 50*time.Second {
		t.Fatalf("wait = %s, want the rest of the window (50s)", w)
	}
	for i := range 2 * maxUnknown {
		th.Fail(fmt.Sprint("client:random-", i), now)
	}
	if n := th.lru.Len(); n != maxUnknown || len(th.unknown) != maxUnknown {
		t.Fatalf("unknown ids kept: %d/%d, want the cap %d", n, len(th.unknown), maxUnknown)
	}
	if w := th.Wait("client:tool-server", now.Add(10*time.Second)); w == 0 {
		t.Fatal("a flood of unknown ids reset a configured id's count")
	}
	if w := th.Wait("client:tool-server", now.Add(Window)); w != 0 {
		t.Fatalf("still throttled after the window: %s", w)
	}
	// Unknown ids are throttled like known ones (429 must not tell which exist).
	for range FailuresPerWindow {
		th.Fail("client:nobody", now)
	}
	if w := th.Wait("client:nobody", now); w == 0 {
		t.Fatal("an unknown id is not throttled")
	}
	th.Succeed("client:tool-server")
	if w := th.Wait("client:tool-server", now); w != 0 {
		t.Fatalf("success did not reset: %s", w)
	}
}
