package audit

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// The bounds of SyncEvery's interval: below 10 ms the fsyncs are as
// frequent as under load with a fsync per grant; above 1 s too much of the
// trail could be lost with the machine.
const (
	MinSyncInterval = 10 * time.Millisecond
	MaxSyncInterval = time.Second
)

// lazySync is the background fsync of a Log in interval mode.
type lazySync struct {
	interval time.Duration
	after    func(time.Duration) <-chan time.Time
	kick     chan struct{} // a record is waiting for its fsync; buffered 1
	stop     chan struct{}
	done     chan struct{}
	stopped  atomic.Bool
	once     sync.Once
}

// SyncEvery trades durability per grant for throughput: Record returns
// once its line is written, and a background fsync covers it at most
// interval later, plus the time of the fsyncs themselves (the one running
// when the line was written, and its own). A crash of the
// machine within that window can lose records of grants already answered;
// a crash of the process alone loses nothing (the lines are in the
// kernel). A failed background fsync poisons the log as in the default
// mode: every later Record fails, so no grant is answered after it.
//
// Without SyncEvery a Log is in grant mode: Record returns only after an
// fsync covering its line succeeded (group-committed).
//
// Call it once, before the first Record. The returned stop ends the
// background fsync after a last one and reports a sticky fsync failure;
// call it before closing the file. Records after stop are fsynced before
// they return, as in grant mode. A Log that does not fsync (stdout, a
// buffer) is unchanged.
func (l *Log) SyncEvery(interval time.Duration) (stop func() error, err error) {
	return l.syncEvery(interval, time.After)
}

func (l *Log) syncEvery(interval time.Duration, after func(time.Duration) <-chan time.Time) (func() error, error) {
	if interval < MinSyncInterval || interval > MaxSyncInterval {
		return nil, fmt.Errorf("audit sync interval %s is outside %s to %s", interval, MinSyncInterval, MaxSyncInterval)
	}
	if l.lazy != nil {
		return nil, errors.New("audit sync interval already set")
	}
	if l.sync == nil {
		return func() error { return nil }, nil
	}
	z := &lazySync{interval: interval, after: after, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	l.lazy = z
	go l.syncLoop(z)
	return func() error {
		z.once.Do(func() {
			z.stopped.Store(true)
			close(z.stop)
			<-z.done
		})
		if e := l.lazyErr.Load(); e != nil {
			return *e
		}
		return nil
	}, nil
}

// syncLater is Record's tail in interval mode: wake the background fsync
// and return, unless a background fsync has failed (then nothing is
// answered any more) or the loop was stopped (then fsync now).
func (l *Log) syncLater(seq uint64) error {
	if e := l.lazyErr.Load(); e != nil {
		return *e
	}
	if l.lazy.stopped.Load() {
		return l.syncThrough(seq)
	}
	select {
	case l.lazy.kick <- struct{}{}:
	default: // a wake-up is already pending; it covers this record
	}
	return nil
}

// syncLoop waits for a record, lets the interval pass, fsyncs everything
// written by then, and starts over. A record written while an fsync runs
// leaves a wake-up pending, so it is covered by the next round.
func (l *Log) syncLoop(z *lazySync) {
	defer close(z.done)
	for {
		select {
		case <-z.kick:
		case <-z.stop:
			l.syncWritten()
			return
		}
		select {
		case <-z.after(z.interval):
		case <-z.stop:
			l.syncWritten()
			return
		}
		l.syncWritten()
	}
}

// syncWritten fsyncs every record written so far, unless an fsync already
// covered them. A failure is sticky, as in syncThrough.
func (l *Log) syncWritten() {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.syncErr != nil {
		return
	}
	upTo := l.written.Load()
	if l.synced >= upTo {
		return
	}
	if err := l.sync(); err != nil {
		l.syncErr = fmt.Errorf("syncing audit events: %w", err)
		l.lazyErr.Store(&l.syncErr)
		return
	}
	l.synced = upTo
}
