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
	"time"

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
	// unsure is set when a write failed: whether it landed is unknown
	// until the writer says (headReader).
	unsure bool

	sync    func() error
	syncMu  sync.Mutex // held while an fsync runs
	written atomic.Uint64
	synced  uint64 // guarded by syncMu
	syncErr error  // guarded by syncMu; sticky

	// lazy is set by SyncEvery: Record no longer waits for the fsync (see
	// interval.go); lazyErr is the first failed background fsync, sticky.
	lazy    *lazySync
	lazyErr atomic.Pointer[error]
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

// FileOptions says what OpenFileWith does with a file whose chain does not
// verify.
type FileOptions struct {
	// NewSegment, when the file's chain does not verify, moves the file
	// aside unchanged to <path>.<n> (the first n not taken) and starts a new
	// chain in path whose first record, audit.segment_started, names the
	// moved file, the first bad line and the last good seq and hash.
	// Without it such a file is refused: appending would hide the damage.
	NewSegment bool
}

// BrokenFileError is OpenFileWith's answer for a file whose chain does not
// verify. It wraps the *BreakError that names the line.
type BrokenFileError struct {
	Path string
	Err  error
}

func (e *BrokenFileError) Error() string {
	return fmt.Sprintf("audit file %s does not verify: %v. The file is left untouched as evidence; "+
		"`valet audit verify %s` shows the break. To start anyway, restart with --audit-new-segment "+
		"(or audit.new_segment: true), which moves the file unchanged to %s.<n> and begins a new chain "+
		"in %s whose first record, audit.segment_started, names the moved file and its last good record",
		e.Path, e.Err, e.Path, e.Path, e.Path)
}

func (e *BrokenFileError) Unwrap() error { return e.Err }

// OpenFile opens (or creates) an audit file for appending and continues the
// chain it holds. A file whose chain does not verify is refused with a
// *BrokenFileError: appending to it would hide the damage.
func OpenFile(path string) (*Log, io.Closer, error) {
	return OpenFileWith(path, FileOptions{})
}

// OpenFileWith is OpenFile with a choice for a broken chain (FileOptions).
func OpenFileWith(path string, o FileOptions) (*Log, io.Closer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("opening audit file: %w", err)
	}
	last, err := Verify(f)
	var br *BreakError
	if errors.As(err, &br) && o.NewSegment {
		f.Close()
		return newSegment(path, last, br)
	}
	if err != nil {
		f.Close()
		if br != nil {
			return nil, nil, &BrokenFileError{Path: path, Err: err}
		}
		return nil, nil, fmt.Errorf("audit file %s: %w", path, err)
	}
	if err := endLine(f); err != nil {
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

// endLine ends a file whose last record lacks its newline with one, so the
// next record starts on a line of its own.
func endLine(f *os.File) error {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return err
	}
	var b [1]byte
	if _, err := f.ReadAt(b[:], st.Size()-1); err != nil {
		return fmt.Errorf("reading the last byte: %w", err)
	}
	if b[0] == '\n' {
		return nil
	}
	_, err = f.Write([]byte{'\n'})
	return err
}

// newSegment moves the broken file at path to the first free path.<n>,
// without changing a byte, and starts a new chain in path that records the
// break as its first event.
func newSegment(path string, last Record, br *BreakError) (*Log, io.Closer, error) {
	var moved string
	for n := 1; ; n++ {
		moved = fmt.Sprintf("%s.%d", path, n)
		err := os.Link(path, moved) // fails if moved exists: nothing is overwritten
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, nil, fmt.Errorf("moving the broken audit file aside: %w", err)
		}
	}
	if err := os.Remove(path); err != nil {
		return nil, nil, fmt.Errorf("moving the broken audit file aside: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("starting a new audit segment: %w", err)
	}
	l := NewLog(f)
	err = l.Record(context.Background(), broker.Event{
		Time: time.Now().UTC(), Type: "audit.segment_started", Actor: "valet",
		Reason: "the previous file's chain does not verify; it was moved aside unchanged",
		Detail: map[string]any{"previous_file": moved, "broken_line": br.Line, "break": br.Error(),
			"last_good_seq": last.Seq, "last_good_hash": last.Hash},
	})
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("starting a new audit segment: %w", err)
	}
	return l, f, nil
}

// Record appends e to the chain. An event whose Chained is this Log is in
// the chain already (RecordVia) and is skipped.
func (l *Log) Record(_ context.Context, e broker.Event) error {
	if e.Chained != nil && e.Chained == any(l) {
		return nil
	}
	e, err := bound(e)
	if err != nil {
		return err
	}
	ev, err := encodeBounded(e)
	if err != nil {
		return fmt.Errorf("encoding audit event: %w", err)
	}
	l.mu.Lock()
	if err := l.resync(); err != nil {
		l.mu.Unlock()
		return err
	}
	r := Record{Seq: l.seq + 1, Prev: l.prev, Event: ev}
	r.Hash = hashOf(r)
	line, err := json.Marshal(r)
	if err != nil {
		l.mu.Unlock()
		return fmt.Errorf("encoding audit event: %w", err)
	}
	line = append(line, '\n')
	if _, err := l.w.Write(line); err != nil {
		l.unsure = true
		l.mu.Unlock()
		return fmt.Errorf("writing audit event: %w", err)
	}
	l.seq, l.prev = r.Seq, r.Hash
	l.written.Store(r.Seq)
	l.mu.Unlock()
	if l.sync == nil {
		return nil
	}
	if l.lazy != nil {
		return l.syncLater(r.Seq)
	}
	return l.syncThrough(r.Seq)
}

// headReader is a writer that can say which record its chain ends with
// (RedisWriter), so that a Log whose write failed, perhaps only in its
// reply, continues after whatever landed instead of reusing a seq.
type headReader interface {
	Head() (seq uint64, hash string, ok bool, err error)
}

// resync, after a failed write, moves the chain to the writer's head when
// the writer can tell it. Called with l.mu held.
func (l *Log) resync() error {
	if !l.unsure {
		return nil
	}
	hr, ok := l.w.(headReader)
	if !ok {
		l.unsure = false
		return nil
	}
	seq, hash, found, err := hr.Head()
	if err != nil {
		return fmt.Errorf("writing audit event: the outcome of the last write is still unknown: %w", err)
	}
	if found && seq >= l.seq {
		l.seq, l.prev = seq, hash
	}
	l.unsure = false
	return nil
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

// BreakError names the first line of a trail that does not verify. It
// matches ErrBroken with errors.Is.
type BreakError struct {
	Line   int    // 1-based
	Seq    uint64 // the line's seq, when it could be read
	Reason string
}

func (e *BreakError) Error() string {
	if e.Seq != 0 {
		return fmt.Sprintf("%s: line %d (seq %d) %s", ErrBroken, e.Line, e.Seq, e.Reason)
	}
	return fmt.Sprintf("%s: line %d %s", ErrBroken, e.Line, e.Reason)
}

func (e *BreakError) Unwrap() error { return ErrBroken }

// Verify reads a trail from the start and checks every link: each line's
// hash, its prev against the line before, and consecutive sequence numbers.
// Lines of any length are read. It returns the last good record, and a
// *BreakError naming the first bad line, or a read error.
func Verify(r io.Reader) (Record, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var last Record
	prev, want := genesis, uint64(1)
	line := 0
	for {
		b, err := br.ReadBytes('\n')
		if len(b) == 0 && errors.Is(err, io.EOF) {
			return last, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return last, fmt.Errorf("reading audit trail after line %d: %w", line, err)
		}
		line++
		if err == nil { // a final line without its newline is still read
			b = b[:len(b)-1]
		}
		if len(b) == 0 {
			return last, &BreakError{Line: line, Reason: "is empty"}
		}
		var rec Record
		if err := json.Unmarshal(b, &rec); err != nil {
			return last, &BreakError{Line: line, Reason: "is not a record: " + broker.Bound(err.Error(), 256)}
		}
		switch {
		case rec.Hash != hashOf(rec):
			return last, &BreakError{Line: line, Seq: rec.Seq, Reason: "was altered: its hash does not match its content"}
		case rec.Prev != prev:
			return last, &BreakError{Line: line, Seq: rec.Seq, Reason: "does not follow the line before it: an event was removed, inserted or moved"}
		case rec.Seq != want:
			return last, &BreakError{Line: line, Seq: rec.Seq, Reason: fmt.Sprintf("has the wrong seq, want %d", want)}
		}
		last, prev, want = rec, rec.Hash, want+1
		if err != nil {
			return last, nil
		}
	}
}

// RecordVia appends e to the chain like Record, but hands the line to write
// instead of the Log's writer, which must be a *RedisWriter: write gets the
// keys and arguments of the stream append (RedisWriter.AppendCall) and runs
// it inside a script of its own, so a ledger writes a grant's records and
// its audit line in one round trip, or neither (revocation's Record
// script). The chain moves on only when write returns nil. After an error
// the line may or may not have landed (a reply lost in a stall, a write
// that reached Redis but not its replicas), so the next record first reads
// the chain's head back from Redis (resync): the chain never skips or
// reuses a seq, and `valet audit verify` finds no gap.
//
// write runs under the chain's lock: records of one chain reach Redis one
// at a time, as they do through Record.
func (l *Log) RecordVia(_ context.Context, e broker.Event, write func(keys []string, args []any) error) error {
	rw, ok := l.w.(*RedisWriter)
	if !ok {
		return errors.New("audit: RecordVia needs a Log over a RedisWriter")
	}
	e, err := bound(e)
	if err != nil {
		return err
	}
	ev, err := encodeBounded(e)
	if err != nil {
		return fmt.Errorf("encoding audit event: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.resync(); err != nil {
		return err
	}
	r := Record{Seq: l.seq + 1, Prev: l.prev, Event: ev}
	r.Hash = hashOf(r)
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding audit event: %w", err)
	}
	keys, args, err := rw.AppendCall(line)
	if err != nil {
		return err
	}
	if err := write(keys, args); err != nil {
		l.unsure = true
		return err
	}
	l.seq, l.prev = r.Seq, r.Hash
	l.written.Store(r.Seq)
	return nil
}

// AppendLua is StreamAppendLua: with RecordVia, it makes a Log over a
// RedisWriter a revocation.Trail.
func (l *Log) AppendLua() string { return StreamAppendLua }
