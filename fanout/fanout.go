// Package fanout serves every follower of Valet's revocation feed from one
// reader per broker: one source read at a time (for Redis, one blocking
// XREAD on a connection of the feed's own client), a ring of recent entries
// in memory, and any number of subscribers, each reading the ring at its
// own pace. A subscriber that falls a whole ring behind is dropped, never
// waited for; subscribers are capped per caller and in total; a subscriber
// that resumes from an older cursor catches up from the source, bounded,
// before it joins the ring.
package fanout

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
)

// Limits bound what followers may cost. Zero fields take the defaults.
type Limits struct {
	// MaxSubscribers caps open streams on this broker (default 1,000);
	// beyond it Subscribe answers unavailable (503).
	MaxSubscribers int
	// MaxPerCaller caps open streams of one client or identity (default
	// 100); beyond it Subscribe answers too_many_requests (429).
	MaxPerCaller int
	// Backlog is how many recent entries the ring keeps (default 10,000):
	// it is also how far a subscriber may fall behind before it is dropped.
	Backlog int
	// MaxCatchup is how many entries one stream may read from the source
	// while catching up to the ring (default 100,000), checked between
	// pages of up to 1,000; past it the stream ends and the follower
	// reconnects from where it got to.
	MaxCatchup int
	// Readers caps concurrent catch-up and snapshot reads of the source
	// (default 4), beside the one live reader.
	Readers int
	// Wait is how long one live read blocks at most (default 5 s).
	Wait time.Duration
	// JoinTimeout is how long Subscribe waits for the live reader to
	// start (default 5 s).
	JoinTimeout time.Duration
}

// WithDefaults fills in the zero fields.
func (l Limits) WithDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxSubscribers, 1000)
	def(&l.MaxPerCaller, 100)
	def(&l.Backlog, 10_000)
	def(&l.MaxCatchup, 100_000)
	def(&l.Readers, 4)
	if l.Wait <= 0 {
		l.Wait = 5 * time.Second
	}
	if l.JoinTimeout <= 0 {
		l.JoinTimeout = 5 * time.Second
	}
	return l
}

// Errors a subscription's Next returns; the stream ends and the follower
// reconnects from the last id it applied.
var (
	// ErrLagged: the subscriber fell a whole ring behind the live reader.
	ErrLagged = errors.New("the follower fell too far behind the feed")
	// ErrCatchupLimit: the subscriber read MaxCatchup entries catching up.
	ErrCatchupLimit = errors.New("the follower read the catch-up limit")
	// ErrUnavailable: the live reader failed (the source is unavailable).
	ErrUnavailable = errors.New("the revocation feed is unavailable")
)

// Hub is the fan-out of one broker. It is safe for concurrent use. Its
// live reader runs while it has subscribers and stops within Limits.Wait
// after the last one leaves.
type Hub struct {
	src     broker.Feed
	lim     Limits
	log     *slog.Logger
	readers chan struct{} // catch-up and snapshot reads in flight

	mu        sync.Mutex
	subs      int
	perCaller map[string]int
	running   bool
	gen       uint64        // live reader run; a new run starts a new ring
	ready     chan struct{} // closed once the run has its head, or failed
	runErr    error         // why the run ended, for its subscribers
	ring      []entry       // ring[seq % len(ring)]
	first     uint64        // seq of the oldest entry kept
	next      uint64        // seq the next entry gets
	start     id            // cursor just before the oldest entry kept
	wake      chan struct{} // closed when entries arrive or the run ends
}

type entry struct {
	e  broker.FeedEntry
	id id
}

// New returns the fan-out over src.
func New(src broker.Feed, lim Limits, log *slog.Logger) (*Hub, error) {
	if src == nil {
		return nil, errors.New("fanout: feed cannot be nil")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lim = lim.WithDefaults()
	return &Hub{src: src, lim: lim, log: log, readers: make(chan struct{}, lim.Readers),
		perCaller: map[string]int{}, wake: make(chan struct{})}, nil
}

// Limits returns the limits in force (defaults filled in).
func (h *Hub) Limits() Limits { return h.lim }

// Subscribers returns how many streams are open.
func (h *Hub) Subscribers() int { h.mu.Lock(); defer h.mu.Unlock(); return h.subs }

// Snapshot reads the source's snapshot, as one of the bounded readers.
func (h *Hub) Snapshot(ctx context.Context, now time.Time) ([]broker.FeedEntry, string, error) {
	if err := h.acquire(ctx); err != nil {
		return nil, "", err
	}
	defer h.release()
	return h.src.Snapshot(ctx, now)
}

func (h *Hub) acquire(ctx context.Context) error {
	select {
	case h.readers <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for a feed reader: %w: %w", broker.ErrUnavailable, ctx.Err())
	}
}

func (h *Hub) release() { <-h.readers }

// Subscribe opens a stream for caller from cursor ("" means from now). It
// answers invalid_request for a malformed cursor, too_many_requests past
// the caller's cap and unavailable past the total cap or while the source
// cannot be read.
func (h *Hub) Subscribe(ctx context.Context, caller, cursor string) (*Subscription, error) {
	var after id
	if cursor != "" {
		var ok bool
		if after, ok = parseID(cursor); !ok {
			return nil, &broker.Error{Code: broker.CodeInvalid, Message: "cursor must be a stream id such as 1700000000000-0", Field: "cursor"}
		}
	}
	h.mu.Lock()
	switch {
	case h.subs >= h.lim.MaxSubscribers:
		h.mu.Unlock()
		return nil, &broker.Error{Code: broker.CodeUnavailable, Rule: "feed.max_subscribers",
			Message: fmt.Sprintf("the revocation feed already serves its maximum of %d streams on this broker; retry later", h.lim.MaxSubscribers)}
	case h.perCaller[caller] >= h.lim.MaxPerCaller:
		h.mu.Unlock()
		return nil, &broker.Error{Code: broker.CodeTooManyRequests, Rule: "feed.max_subscribers_per_client",
			Message: fmt.Sprintf("this client already has its maximum of %d open revocation streams; close one or retry later", h.lim.MaxPerCaller)}
	}
	h.subs++
	h.perCaller[caller]++
	if !h.running {
		h.startLocked()
	}
	ready, gen := h.ready, h.gen
	h.mu.Unlock()

	s := &Subscription{h: h, caller: caller, gen: gen, after: after}
	t := time.NewTimer(h.lim.JoinTimeout)
	defer t.Stop()
	select {
	case <-ready:
	case <-ctx.Done():
		s.Close()
		return nil, &broker.Error{Code: broker.CodeUnavailable, Message: "the revocation feed is unavailable", Err: ctx.Err()}
	case <-t.C:
		s.Close()
		return nil, &broker.Error{Code: broker.CodeUnavailable, Message: "the revocation feed is unavailable", Err: errors.New("the live reader did not start in time")}
	}
	h.mu.Lock()
	if h.gen != gen {
		err := h.runErr
		h.mu.Unlock()
		s.Close()
		return nil, &broker.Error{Code: broker.CodeUnavailable, Message: "the revocation feed is unavailable", Err: err}
	}
	switch {
	case cursor == "":
		s.joined, s.pos, s.after = true, h.next, h.headLocked()
	case !after.less(h.start):
		s.joined, s.pos = true, h.seqAfterLocked(after)
	}
	h.mu.Unlock()
	return s, nil
}

// headLocked is the cursor of the newest entry read (or the ring's start).
func (h *Hub) headLocked() id {
	if h.next > h.first {
		return h.ring[(h.next-1)%uint64(len(h.ring))].id
	}
	return h.start
}

// seqAfterLocked is the seq of the first kept entry after a (h.next if none).
func (h *Hub) seqAfterLocked(a id) uint64 {
	lo, hi := h.first, h.next
	for lo < hi {
		mid := lo + (hi-lo)/2
		if a.less(h.ring[mid%uint64(len(h.ring))].id) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// startLocked starts a live reader run with a fresh ring.
func (h *Hub) startLocked() {
	h.running = true
	h.gen++
	h.ready = make(chan struct{})
	h.runErr = nil
	h.ring = make([]entry, h.lim.Backlog)
	h.first, h.next = 0, 0
	go h.run(h.gen, h.ready)
}

// run is the one live reader: it finds the head, then reads after it until
// no subscriber is left or the source fails.
func (h *Hub) run(gen uint64, ready chan struct{}) {
	ctx := context.Background()
	_, cur, err := h.src.Follow(ctx, "", time.Millisecond)
	h.mu.Lock()
	if err == nil {
		var ok bool
		if h.start, ok = parseID(cur); !ok {
			err = fmt.Errorf("the feed answered a bad cursor %q", cur)
		}
	}
	if err != nil {
		h.endLocked(gen, err)
		close(ready)
		h.mu.Unlock()
		return
	}
	// Entries of this first read are left to catch-up: the ring starts
	// after them, and a cursor before the ring reads the source.
	close(ready)
	for {
		if h.subs == 0 {
			h.running = false
			h.mu.Unlock()
			return
		}
		cur = h.headLocked().String()
		h.mu.Unlock()
		entries, _, err := h.src.Follow(ctx, cur, h.lim.Wait)
		h.mu.Lock()
		if err != nil {
			h.log.Warn("revocation feed reader failed; ending its streams", "err", err)
			h.endLocked(gen, err)
			h.mu.Unlock()
			return
		}
		h.publishLocked(entries)
	}
}

// endLocked ends run gen: its subscribers get ErrUnavailable.
func (h *Hub) endLocked(gen uint64, err error) {
	if h.gen == gen {
		h.running = false
		h.runErr = err
		h.gen++ // subscribers of the ended run see a new generation
		close(h.wake)
		h.wake = make(chan struct{})
	}
}

func (h *Hub) publishLocked(entries []broker.FeedEntry) {
	n := uint64(len(h.ring))
	added := false
	for _, e := range entries {
		eid, ok := parseID(e.Cursor)
		if !ok || !h.headLocked().less(eid) {
			continue
		}
		if h.next-h.first == n {
			h.start = h.ring[h.first%n].id
			h.first++
		}
		h.ring[h.next%n] = entry{e: e, id: eid}
		h.next++
		added = true
	}
	if added {
		close(h.wake)
		h.wake = make(chan struct{})
	}
}

// Subscription is one follower's stream. Next and Close may be called from
// one goroutine at a time.
type Subscription struct {
	h      *Hub
	caller string
	gen    uint64
	once   sync.Once

	joined bool   // reading the ring (else catching up from the source)
	pos    uint64 // next ring seq to read
	after  id     // last cursor delivered
	caught int    // entries read while catching up
}

// Cursor is the id after which the stream continues.
func (s *Subscription) Cursor() string { return s.after.String() }

// maxBatch is the most entries one Next returns.
const maxBatch = 1000

// Next waits up to wait for entries after the cursor and returns them
// (none when wait passed). An error ends the stream: ErrLagged,
// ErrCatchupLimit, ErrUnavailable (or an error wrapping
// broker.ErrUnavailable), or ctx's.
func (s *Subscription) Next(ctx context.Context, wait time.Duration) ([]broker.FeedEntry, error) {
	h := s.h
	if !s.joined {
		return s.catchUp(ctx)
	}
	var timer *time.Timer
	for {
		h.mu.Lock()
		if h.gen != s.gen {
			h.mu.Unlock()
			return nil, ErrUnavailable
		}
		if s.pos < h.first {
			h.mu.Unlock()
			return nil, ErrLagged
		}
		if s.pos < h.next {
			n := uint64(len(h.ring))
			out := make([]broker.FeedEntry, 0, min(h.next-s.pos, maxBatch))
			for ; s.pos < h.next && len(out) < maxBatch; s.pos++ {
				en := h.ring[s.pos%n]
				if s.after.less(en.id) {
					out = append(out, en.e)
					s.after = en.id
				}
			}
			h.mu.Unlock()
			if len(out) > 0 {
				return out, nil
			}
			continue
		}
		wake := h.wake
		h.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(wait)
			defer timer.Stop()
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return nil, nil
		case <-wake:
		}
	}
}

// catchUp reads one page after the cursor from the source and joins the
// ring once the cursor reaches what the ring holds.
func (s *Subscription) catchUp(ctx context.Context) ([]broker.FeedEntry, error) {
	h := s.h
	// Checked before a read, not after: every stream delivers at least one
	// page, so a follower that reconnects from its last id makes progress.
	if s.caught >= h.lim.MaxCatchup {
		return nil, ErrCatchupLimit
	}
	if err := h.acquire(ctx); err != nil {
		return nil, err
	}
	entries, cur, err := h.src.Follow(ctx, s.after.String(), time.Millisecond)
	h.release()
	if err != nil {
		return nil, err
	}
	s.caught += len(entries)
	c, ok := parseID(cur)
	if !ok {
		return nil, fmt.Errorf("the feed answered a bad cursor %q", cur)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen != s.gen {
		return nil, ErrUnavailable
	}
	if s.after.less(c) {
		s.after = c
	}
	if !s.after.less(h.start) {
		s.joined, s.pos = true, h.seqAfterLocked(s.after)
	} else if len(entries) == 0 {
		// Nothing after the cursor, yet the ring starts later: the source
		// lost what lay between. Join at the ring's start.
		s.joined, s.pos = true, h.first
	}
	return entries, nil
}

// Close ends the subscription and frees its place. It is idempotent.
func (s *Subscription) Close() {
	s.once.Do(func() {
		h := s.h
		h.mu.Lock()
		defer h.mu.Unlock()
		h.subs--
		if h.perCaller[s.caller]--; h.perCaller[s.caller] <= 0 {
			delete(h.perCaller, s.caller)
		}
	})
}

// id is a stream id "<ms>-<seq>".
type id struct{ ms, seq uint64 }

func parseID(s string) (id, bool) {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		seq = "0"
	}
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	return id{a, b}, err1 == nil && err2 == nil
}

func (a id) less(b id) bool { return a.ms < b.ms || (a.ms == b.ms && a.seq < b.seq) }

func (a id) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}
