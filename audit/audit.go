// Package audit writes Valet's audit trail as hash-chained JSON lines and
// checks such a trail for edits, deletions and reordering.
package audit

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/valet-dev/valet/broker"
)

// genesis is the prev hash of the first event of a chain.
const genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// Record is one line of the trail: the event exactly as written, its
// position, the hash of the line before and its own hash over all three.
type Record struct {
	Seq   uint64          `json:"seq"`
	Prev  string          `json:"prev"`
	Hash  string          `json:"hash"`
	Event json.RawMessage `json:"event"`
}

// Log appends hash-chained events to a writer. It implements broker.Auditor
// and is safe for concurrent use; Record returns after the line is written
// (and synced, when the writer is a file).
//
// Syncs are group commits: a record's line is written under the chain's
// lock, then its caller waits until one fsync covers it. Callers that arrive
// while an fsync runs are all covered by the next one, so a busy broker pays
// one fsync per batch, not one per event. A failed fsync poisons the log:
// what the kernel dropped cannot be known, so every later Record fails too.
type Log struct {
	mu   sync.Mutex // guards the chain and the writer
	w    io.Writer
	seq  uint64
	prev string

	sync    func() error
	syncMu  sync.Mutex // held while an fsync runs
	written atomic.Uint64
	synced  uint64 // guarded by syncMu
	syncErr error  // guarded by syncMu; sticky
}

// NewLog appends to w. If w is an *os.File, each record is fsynced before
// Record returns.
func NewLog(w io.Writer) *Log {
	l := &Log{w: w, prev: genesis}
	if f, ok := w.(*os.File); ok && f != os.Stdout && f != os.Stderr {
		l.sync = f.Sync
	}
	return l
}

// OpenFile opens (or creates) an audit file for appending and continues the
// chain it holds. A file whose chain does not verify is refused: appending
// to it would hide the damage.
func OpenFile(path string) (*Log, io.Closer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("opening audit file: %w", err)
	}
	last, err := Verify(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("audit file %s: %w", path, err)
	}
	l := NewLog(f)
	if last.Hash != "" {
		l.seq, l.prev = last.Seq, last.Hash
		l.written.Store(last.Seq)
		l.synced = last.Seq
	}
	return l, f, nil
}

// Record appends e to the chain.
func (l *Log) Record(_ context.Context, e broker.Event) error {
	ev, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("encoding audit event: %w", err)
	}
	l.mu.Lock()
	r := Record{Seq: l.seq + 1, Prev: l.prev, Event: ev}
	r.Hash = hashOf(r)
	line, err := json.Marshal(r)
	if err != nil {
		l.mu.Unlock()
		return fmt.Errorf("encoding audit event: %w", err)
	}
	line = append(line, '\n')
	if _, err := l.w.Write(line); err != nil {
		l.mu.Unlock()
		return fmt.Errorf("writing audit event: %w", err)
	}
	l.seq, l.prev = r.Seq, r.Hash
	l.written.Store(r.Seq)
	l.mu.Unlock()
	if l.sync == nil {
		return nil
	}
	return l.syncThrough(r.Seq)
}

// syncThrough returns once an fsync that started after record seq was
// written has succeeded, running one itself if none has.
func (l *Log) syncThrough(seq uint64) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	if l.syncErr != nil {
		return l.syncErr
	}
	if l.synced >= seq {
		return nil // an fsync that ran while we waited covered us
	}
	upTo := l.written.Load() // everything written so far is in this fsync
	if err := l.sync(); err != nil {
		l.syncErr = fmt.Errorf("syncing audit events: %w", err)
		return l.syncErr
	}
	l.synced = upTo
	return nil
}

// hashOf is SHA-256 over the sequence number, the previous hash and the
// event's bytes as written.
func hashOf(r Record) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d\n%s\n", r.Seq, r.Prev)
	h.Write(r.Event)
	return hex.EncodeToString(h.Sum(nil))
}

// ErrBroken means the chain does not verify.
var ErrBroken = errors.New("audit chain broken")

// Verify reads a trail from the start and checks every link: each line's
// hash, its prev against the line before, and consecutive sequence numbers.
// It returns the last record, or an error naming the first bad line.
func Verify(r io.Reader) (Record, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 4*1024*1024)
	var last Record
	prev, want := genesis, uint64(1)
	line := 0
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			return last, fmt.Errorf("%w: line %d is empty", ErrBroken, line)
		}
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return last, fmt.Errorf("%w: line %d is not a record: %v", ErrBroken, line, err)
		}
		h := hashOf(rec)
		switch {
		case rec.Hash != h:
			return last, fmt.Errorf("%w: line %d (seq %d) was altered: its hash does not match its content", ErrBroken, line, rec.Seq)
		case rec.Prev != prev:
			return last, fmt.Errorf("%w: line %d (seq %d) does not follow the line before it: an event was removed, inserted or moved", ErrBroken, line, rec.Seq)
		case rec.Seq != want:
			return last, fmt.Errorf("%w: line %d has seq %d, want %d", ErrBroken, line, rec.Seq, want)
		}
		last, prev, want = rec, rec.Hash, want+1
	}
	if err := sc.Err(); err != nil {
		return last, fmt.Errorf("reading audit trail: %w", err)
	}
	return last, nil
}
