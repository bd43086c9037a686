package inventory

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/valet-dev/valet/broker"
)

// Recorder defaults.
const (
	DefaultBuffer   = 4096
	DefaultBatch    = 256
	DefaultInterval = time.Second
	writeTimeout    = 2 * time.Second
)

// RecorderConfig wires a Recorder. Store is required.
type RecorderConfig struct {
	Store Store
	// Labels computes owner labels from claims (nil: none).
	Labels *Labeler
	// Buffer is how many sightings wait for the writer before new ones are
	// dropped (default DefaultBuffer).
	Buffer int
	// Batch is how many distinct agents one write carries at most (default
	// DefaultBatch); Interval how long a sighting waits for a write at most
	// (default DefaultInterval).
	Batch    int
	Interval time.Duration
	Logger   *slog.Logger
}

// Recorder is the broker.Sightings of the inventory: Saw puts a sighting
// in a bounded buffer without blocking (a full buffer drops it and counts
// the loss), and Run writes them to the Store in batches, off the request
// path. It is safe for concurrent use.
type Recorder struct {
	store    Store
	labels   *Labeler
	ch       chan sighting
	batch    int
	interval time.Duration
	log      *slog.Logger
	lost     atomic.Uint64
}

var _ broker.Sightings = (*Recorder)(nil)

type sighting struct {
	issuer, subject, template string
	at                        time.Time
	claims                    map[string]any
}

// NewRecorder checks cfg and returns a Recorder; start Run to write.
func NewRecorder(cfg RecorderConfig) (*Recorder, error) {
	if cfg.Store == nil {
		return nil, errors.New("inventory recorder: store cannot be nil")
	}
	r := &Recorder{store: cfg.Store, labels: cfg.Labels, batch: cfg.Batch, interval: cfg.Interval, log: cfg.Logger}
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	r.ch = make(chan sighting, cfg.Buffer)
	if r.batch <= 0 {
		r.batch = DefaultBatch
	}
	if r.interval <= 0 {
		r.interval = DefaultInterval
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	return r, nil
}

// Saw records that agent p was granted a task of template at at. It never
// blocks and never fails: when the buffer is full the sighting is dropped
// and counted in Lost. The claims are read later, by Run (a verified
// token's claims are never changed).
func (r *Recorder) Saw(p broker.Principal, template string, at time.Time) {
	select {
	case r.ch <- sighting{issuer: p.Issuer, subject: p.Subject, template: template, at: at, claims: p.Claims}:
	default:
		r.lost.Add(1)
	}
}

// Lost counts the sightings dropped since start: buffer full, or a write
// to the Store that failed (valet_inventory_sightings_lost_total).
func (r *Recorder) Lost() uint64 { return r.lost.Load() }

// pending coalesces the sightings of one agent and template until a write:
// the earliest and the latest.
type pending struct {
	first, last sighting
	n           uint64
}

type pendingKey struct{ issuer, subject, template string }

// Run writes sightings until ctx ends, then writes what it holds (within
// a short timeout) and returns.
func (r *Recorder) Run(ctx context.Context) {
	tick := time.NewTicker(r.interval)
	defer tick.Stop()
	held := map[pendingKey]*pending{}
	flush := func(ctx context.Context) {
		if len(held) > 0 {
			r.write(ctx, held)
			clear(held)
		}
	}
	for {
		select {
		case <-ctx.Done():
			for drained := false; !drained; {
				select {
				case s := <-r.ch:
					hold(held, s)
				default:
					drained = true
				}
			}
			flush(context.WithoutCancel(ctx))
			return
		case s := <-r.ch:
			hold(held, s)
			if len(held) >= r.batch {
				flush(ctx)
			}
		case <-tick.C:
			flush(ctx)
		}
	}
}

func hold(held map[pendingKey]*pending, s sighting) {
	k := pendingKey{s.issuer, s.subject, s.template}
	p := held[k]
	if p == nil {
		held[k] = &pending{first: s, last: s, n: 1}
		return
	}
	p.n++
	if s.at.Before(p.first.at) {
		p.first = s
	}
	if !s.at.Before(p.last.at) {
		p.last = s
	}
}

// write records held in one Store call; on failure the sightings count as
// lost (the next sighting of each agent records it again).
func (r *Recorder) write(ctx context.Context, held map[pendingKey]*pending) {
	seen := make([]Seen, 0, len(held)*2)
	var n uint64
	for k, p := range held {
		n += p.n
		if p.first.at.Before(p.last.at) {
			seen = append(seen, Seen{Issuer: k.issuer, Subject: k.subject, Template: k.template, At: p.first.at, Labels: r.labels.Labels(p.first.claims)})
		}
		seen = append(seen, Seen{Issuer: k.issuer, Subject: k.subject, Template: k.template, At: p.last.at, Labels: r.labels.Labels(p.last.claims)})
	}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := r.store.Record(wctx, seen); err != nil {
		r.lost.Add(n)
		r.log.WarnContext(ctx, "agent inventory write failed; sightings lost", "sightings", n, "err", err)
	}
}
