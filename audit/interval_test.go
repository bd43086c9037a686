package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// seqWriter keeps the lines written and which seq each event's task got.
type seqWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	seqOf map[string]uint64
}

func (w *seqWriter) Write(p []byte) (int, error) {
	var r struct {
		Seq   uint64 `json:"seq"`
		Event struct {
			TaskID string `json:"task_id"`
		} `json:"event"`
	}
	if err := json.Unmarshal(p, &r); err != nil {
		return 0, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.seqOf == nil {
		w.seqOf = map[string]uint64{}
	}
	w.seqOf[r.Event.TaskID] = r.Seq
	return w.buf.Write(p)
}

func (w *seqWriter) seq(task string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seqOf[task]
}

// fakeDisk is a sync func that remembers the highest seq each fsync covered.
type fakeDisk struct {
	l       *Log
	calls   atomic.Int64
	durable atomic.Uint64
	fail    atomic.Bool
	synced  chan uint64 // optional: told about every fsync
}

func (d *fakeDisk) sync() error {
	d.calls.Add(1)
	if d.fail.Load() {
		return errors.New("input/output error")
	}
	upTo := d.l.written.Load()
	d.durable.Store(upTo)
	if d.synced != nil {
		d.synced <- upTo
	}
	return nil
}

func newFakeLog() (*Log, *seqWriter, *fakeDisk) {
	w := &seqWriter{}
	l := NewLog(w)
	d := &fakeDisk{l: l}
	l.sync = d.sync
	return l, w, d
}

// TestGrantModeAnswersAfterItsFsync: in the default mode no Record returns
// before an fsync that covers its own line, however many run at once.
func TestGrantModeAnswersAfterItsFsync(t *testing.T) {
	l, w, d := newFakeLog()
	const workers, each = 16, 20
	errs := make(chan error, workers)
	for k := range workers {
		go func() {
			for i := range each {
				task := fmt.Sprintf("tsk_%d_%d", k, i)
				if err := l.Record(context.Background(), broker.Event{Type: "task.granted", TaskID: task}); err != nil {
					errs <- err
					return
				}
				if seq, durable := w.seq(task), d.durable.Load(); seq == 0 || durable < seq {
					errs <- fmt.Errorf("%s (seq %d) answered with the disk synced through seq %d", task, seq, durable)
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := d.calls.Load(); n < 1 || n > workers*each {
		t.Fatalf("%d fsyncs for %d records", n, workers*each)
	}
}

// TestIntervalModeSyncsWithinTheBound: in interval mode Record answers
// without an fsync, the background fsync waits exactly the interval, and
// the fsync after that wait covers every record answered before it.
func TestIntervalModeSyncsWithinTheBound(t *testing.T) {
	l, w, d := newFakeLog()
	d.synced = make(chan uint64, 8)
	waits := make(chan time.Duration, 8)
	timers := make(chan chan time.Time, 8)
	after := func(dur time.Duration) <-chan time.Time {
		c := make(chan time.Time, 1)
		waits <- dur
		timers <- c
		return c
	}
	const interval = 50 * time.Millisecond
	stop, err := l.syncEvery(interval, after)
	if err != nil {
		t.Fatal(err)
	}
	record := func(task string) {
		t.Helper()
		if err := l.Record(context.Background(), broker.Event{Type: "task.granted", TaskID: task}); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 3 {
		var tasks []string
		for i := range 5 {
			task := fmt.Sprintf("tsk_%d_%d", round, i)
			record(task)
			tasks = append(tasks, task)
		}
		if n := d.calls.Load(); n != int64(round) {
			t.Fatalf("round %d: %d fsyncs before the interval passed, want %d", round, n, round)
		}
		if got := <-waits; got != interval {
			t.Fatalf("round %d: the background fsync waits %s, want the interval %s", round, got, interval)
		}
		(<-timers) <- time.Now()
		upTo := <-d.synced
		for _, task := range tasks {
			if seq := w.seq(task); seq == 0 || seq > upTo {
				t.Fatalf("round %d: %s (seq %d) not covered by the fsync after the interval (through %d)", round, task, seq, upTo)
			}
		}
	}
	// A record the loop has not waited for yet is covered by stop's fsync.
	record("tsk_last")
	go func() {
		for c := range timers { // the wait for tsk_last, cut short by stop
			_ = c
		}
	}()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if durable := d.durable.Load(); durable < w.seq("tsk_last") {
		t.Fatalf("stop returned with the disk synced through %d, want %d", durable, w.seq("tsk_last"))
	}
	// After stop, a record is fsynced before it returns again.
	record("tsk_after_stop")
	if durable := d.durable.Load(); durable < w.seq("tsk_after_stop") {
		t.Fatalf("a record after stop answered before its fsync (synced through %d, its seq %d)", durable, w.seq("tsk_after_stop"))
	}
}

// TestIntervalModeFailureIsSticky: once a background fsync fails, no
// Record succeeds any more, and stop reports the failure.
func TestIntervalModeFailureIsSticky(t *testing.T) {
	l, _, d := newFakeLog()
	fired := make(chan time.Time)
	close(fired)
	stop, err := l.syncEvery(MinSyncInterval, func(time.Duration) <-chan time.Time { return fired })
	if err != nil {
		t.Fatal(err)
	}
	d.fail.Store(true)
	if err := l.Record(context.Background(), broker.Event{Type: "x", TaskID: "tsk_1"}); err != nil {
		t.Fatalf("the first Record waits for no fsync, yet failed: %v", err)
	}
	if err := stop(); err == nil {
		t.Fatal("stop reported no error although the fsync failed")
	}
	if err := l.Record(context.Background(), broker.Event{Type: "y", TaskID: "tsk_2"}); err == nil {
		t.Fatal("Record succeeded after a background fsync failed")
	}
}

func TestSyncEveryRejectsIntervalsOutOfBounds(t *testing.T) {
	for _, d := range []time.Duration{0, time.Millisecond, 2 * time.Second} {
		l, _, _ := newFakeLog()
		if _, err := l.SyncEvery(d); err == nil {
			t.Errorf("SyncEvery(%s) accepted", d)
		}
	}
}

// BenchmarkRecordFileInterval is BenchmarkRecordFile with SyncEvery(100ms):
// Record returns once the line is written.
func BenchmarkRecordFileInterval(b *testing.B) {
	l, c, err := OpenFile(filepath.Join(b.TempDir(), "audit.jsonl"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	stop, err := l.SyncEvery(100 * time.Millisecond)
	if err != nil {
		b.Fatal(err)
	}
	defer stop()
	e := broker.Event{Time: time.Now(), Type: "task.granted", TaskID: "tsk_abcdefghijklmnopqrstuvwxyz", Actor: "agent-1",
		Creds: []string{"jti-abcdefghijklmnop"}, Detail: map[string]any{"intent": "triage ticket 4521", "ttl_seconds": 600}}
	b.SetParallelism(16)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Record(context.Background(), e); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
