package revocation

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
)

// MemoryFeed is the revocation feed of a MemoryLedger: every JWT that End
// denies, with the Redis feed's cursors ("<unix ms>-<seq>") and its
// bounds (FeedMaxLen entries, none older than broker.EpochTTL), so that
// `valet dev` without Redis serves the same feed through the same
// fan-out. The memory ledger has no epochs and no controls (controls live
// only in Redis), so neither has its feed. It is
// safe for concurrent use.
type MemoryFeed struct {
	now func() time.Time

	mu      sync.Mutex
	entries []memEntry
	last    id2
	wake    chan struct{} // closed when an entry is added
}

type memEntry struct {
	id id2
	e  broker.FeedEntry
}

// id2 is a stream id.
type id2 struct{ ms, seq uint64 }

func (a id2) less(b id2) bool { return a.ms < b.ms || (a.ms == b.ms && a.seq < b.seq) }
func (a id2) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}

// parseID2 reads a cursor that validStreamID accepted ("<ms>" or "<ms>-<seq>").
func parseID2(s string) id2 {
	var a id2
	_, _ = fmt.Sscanf(s, "%d-%d", &a.ms, &a.seq)
	return a
}

var _ broker.Feed = (*MemoryFeed)(nil)

// Feed returns the ledger's revocation feed.
func (l *MemoryLedger) Feed() *MemoryFeed {
	l.feedOnce.Do(func() { l.feed = &MemoryFeed{now: l.now, wake: make(chan struct{})} })
	return l.feed
}

// feedRevoked announces the JWTs among creds of an ended task (End holds
// l.mu; the feed has its own lock).
func (l *MemoryLedger) feedRevoked(taskID string, creds []broker.Credential) {
	f := l.Feed()
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	added := false
	for _, c := range creds {
		if c.Kind != broker.KindJWT {
			continue
		}
		next := id2{ms: uint64(now.UnixMilli())}
		if !f.last.less(next) {
			next = id2{f.last.ms, f.last.seq + 1}
		}
		f.last = next
		f.entries = append(f.entries, memEntry{next, broker.FeedEntry{Cursor: next.String(), JTI: c.ID, TaskID: taskID, Exp: c.ExpiresAt.Truncate(time.Second).UTC()}})
		added = true
	}
	// Trim as the Redis feed does: at most FeedMaxLen, nothing older than
	// broker.EpochTTL.
	cut := max(len(f.entries)-FeedMaxLen, 0)
	for cut < len(f.entries) && int64(f.entries[cut].id.ms) < now.Add(-broker.EpochTTL).UnixMilli() {
		cut++
	}
	f.entries = f.entries[cut:]
	if added {
		close(f.wake)
		f.wake = make(chan struct{})
	}
}

// Snapshot implements broker.Feed.
func (f *MemoryFeed) Snapshot(_ context.Context, now time.Time) ([]broker.FeedEntry, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []broker.FeedEntry
	for _, e := range f.entries {
		if e.e.Exp.After(now) {
			out = append(out, e.e)
		}
	}
	return out, f.last.String(), nil
}

// Follow implements broker.Feed.
func (f *MemoryFeed) Follow(ctx context.Context, cursor string, wait time.Duration) ([]broker.FeedEntry, string, error) {
	if cursor != "" && !validStreamID(cursor) {
		return nil, "", &broker.Error{Code: broker.CodeInvalid, Message: "cursor must be a stream id such as 1700000000000-0", Field: "cursor"}
	}
	var timer <-chan time.Time
	for {
		f.mu.Lock()
		if cursor == "" {
			cursor = f.last.String()
		}
		after := parseID2(cursor)
		i := sort.Search(len(f.entries), func(i int) bool { return after.less(f.entries[i].id) })
		if n := min(len(f.entries)-i, 1000); n > 0 {
			out := make([]broker.FeedEntry, n)
			for j := range n {
				out[j] = f.entries[i+j].e
			}
			f.mu.Unlock()
			return out, out[n-1].Cursor, nil
		}
		wake := f.wake
		f.mu.Unlock()
		if timer == nil {
			t := time.NewTimer(wait)
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ctx.Done():
			return nil, "", fmt.Errorf("following the revocation feed: %w", ctx.Err())
		case <-timer:
			return nil, cursor, nil
		case <-wake:
		}
	}
}
