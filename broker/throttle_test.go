package broker

import (
	"fmt"
	"testing"
	"time"
)

// TestSecretThrottle guards issue 9 (low): failed client-secret attempts
// were never limited, so a client's secret could be guessed at line rate.
// After SecretFailuresPerWindow failures an id waits out the window (also
// with the right secret, or the throttle would be an oracle); a flood of
// unknown ids is bounded in memory and cannot evict a configured id's
// count.
func TestSecretThrottle(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	th := NewSecretThrottle([]string{"client:tool-server"})
	for i := range SecretFailuresPerWindow {
		if w := th.Wait("client:tool-server", now); w != 0 {
			t.Fatalf("throttled after %d failures", i)
		}
		th.Fail("client:tool-server", now)
	}
	if w := th.Wait("client:tool-server", now.Add(10*time.Second)); w != 50*time.Second {
		t.Fatalf("wait = %s, want the rest of the window (50s)", w)
	}
	for i := range 2 * maxUnknownClientIDs {
		th.Fail(fmt.Sprint("client:random-", i), now)
	}
	if n := th.lru.Len(); n != maxUnknownClientIDs || len(th.unknown) != maxUnknownClientIDs {
		t.Fatalf("unknown ids kept: %d/%d, want the cap %d", n, len(th.unknown), maxUnknownClientIDs)
	}
	if w := th.Wait("client:tool-server", now.Add(10*time.Second)); w == 0 {
		t.Fatal("a flood of unknown ids reset a configured id's count")
	}
	if w := th.Wait("client:tool-server", now.Add(SecretFailureWindow)); w != 0 {
		t.Fatalf("still throttled after the window: %s", w)
	}
	// Unknown ids are throttled like known ones (429 must not tell which exist).
	for range SecretFailuresPerWindow {
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
