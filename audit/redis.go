package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redisslot"
	"github.com/valet-dev/valet/internal/replwait"
)

// Multi writes each event to every auditor; any failure fails the event
// (and so the action that caused it). It is safe for concurrent use when
// its auditors are.
type Multi []broker.Auditor

// Record implements broker.Auditor.
func (m Multi) Record(ctx context.Context, e broker.Event) error {
	var errs []error
	for _, a := range m {
		if err := a.Record(ctx, e); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Defaults of RedisWriterOptions.
const (
	// DefaultStreamMaxLen is the default cap on entries in the audit stream.
	DefaultStreamMaxLen = 100_000
	// DefaultStreamRetention is the default age after which stream entries
	// are trimmed: the longest task (24 h) plus an hour.
	DefaultStreamRetention = 25 * time.Hour
)

// RedisWriterOptions configure a RedisWriter. Zero values take defaults.
type RedisWriterOptions struct {
	// Prefix of the keys; default "valet".
	Prefix string
	// Retention is how long the stream keeps an entry (trimmed by MINID on
	// each append) and how long a task's index and a
	// chain's head outlive their last append; default
	// DefaultStreamRetention.
	Retention time.Duration
	// MaxLen caps the stream's entries (trimmed by MAXLEN ~ on each
	// append); default DefaultStreamMaxLen. The audit file is the durable
	// copy; the stream is a bounded, recent one for timelines.
	MaxLen int64
	// Timeout bounds one append; default 2 s.
	Timeout time.Duration
	// Now is the clock for retention; default time.Now.
	Now func() time.Time
	// Durable, when set, answers an append only once it reached the
	// replicas it asks for (redis.durability: replica); otherwise the
	// append fails, and so does the action it records.
	Durable *replwait.Waiter
}

// RedisWriter is an audit sink that appends each line of a Log to a Redis
// stream (<prefix>:audit), tagged with the chain it belongs to, and indexes
// lines by task (<prefix>:audit:task:<id>) for timelines. Each broker
// process writes its own chain (a random chain id), so replicas sharing one
// stream never interleave one chain. Use it as NewLog(NewRedisWriter(...)).
//
// Appends are idempotent: a chain's head (<prefix>:audit:chain:<id>, its
// last seq and hash) is checked and moved in the same script as the XADD,
// so a retried append of a record that already landed is a no-op, and a
// record whose seq is taken or out of order is refused. After a failed
// append the Log reads the head back (Head) before its next record, so a
// reply lost in a stall never makes two records share a seq.
type RedisWriter struct {
	c       redis.UniversalClient
	prefix  string
	chain   string
	timeout time.Duration
	ttl     time.Duration
	maxLen  int64
	now     func() time.Time
	durable *replwait.Waiter
}

// NewRedisWriter writes to the stream under o.Prefix.
func NewRedisWriter(c redis.UniversalClient, o RedisWriterOptions) (*RedisWriter, error) {
	if c == nil {
		return nil, errors.New("audit: redis client cannot be nil")
	}
	if o.Prefix == "" {
		o.Prefix = "valet"
	}
	if err := redisslot.CheckClient(c, o.Prefix); err != nil {
		return nil, fmt.Errorf("audit stream: %w", err)
	}
	if o.Retention <= 0 {
		o.Retention = DefaultStreamRetention
	}
	if o.MaxLen <= 0 {
		o.MaxLen = DefaultStreamMaxLen
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &RedisWriter{c: c, prefix: o.Prefix, chain: hex.EncodeToString(b[:]), timeout: o.Timeout,
		ttl: o.Retention, maxLen: o.MaxLen, now: o.Now, durable: o.Durable}, nil
}

// Chain is this writer's chain id.
func (w *RedisWriter) Chain() string { return w.chain }

func (w *RedisWriter) stream() string { return w.prefix + ":audit" }
func (w *RedisWriter) head() string   { return w.prefix + ":audit:chain:" + w.chain }
func (w *RedisWriter) taskIndex(id string) string {
	return w.prefix + ":audit:task:" + strings.NewReplacer("%", "%25", ":", "%3A").Replace(id)
}

// StreamAppendLua defines two Lua functions that append one record line to
// its chain in the audit stream, for appendScript and for any script that
// writes the line together with records of its own (revocation's Record
// script, through RecordVia):
//
//	audit_check(K, A)  nil if the line may be appended; otherwise the reply
//	                   to return: 'duplicate' (the line is the chain's head
//	                   already: a retry that landed) or an error
//	audit_append(K, A) appends it and answers the stream entry id
//
// K: stream, chain head, then the index of every task the record names.
// A: chain, line, seq, hash, prev, ttl ms, maxlen, minid (ms; never past
// the new entry, whatever the clocks). RedisWriter.AppendCall builds both.
// A record equal to the head is a no-op; any other must be the head's
// successor. Every append trims the stream by length (MAXLEN ~) and by
// age (MINID).
const StreamAppendLua = `
local function audit_check(K, A)
  local head = redis.call('HMGET', K[2], 'seq', 'hash')
  local last, seq = tonumber(head[1]), tonumber(A[3])
  if last then
    if seq == last and head[2] == A[4] then
      return 'duplicate'
    end
    if seq ~= last + 1 or head[2] ~= A[5] then
      return redis.error_reply('VALETAUDIT chain ' .. A[1] .. ' is at seq ' .. last .. ': record seq ' .. seq .. ' does not follow it')
    end
  end
  return nil
end
local function audit_append(K, A)
  local id = redis.call('XADD', K[1], 'MAXLEN', '~', A[7], '*', 'chain', A[1], 'line', A[2])
  local ms = tonumber(string.match(id, '^(%d+)'))
  redis.call('XTRIM', K[1], 'MINID', string.format('%d', math.min(tonumber(A[8]), ms)))
  redis.call('HSET', K[2], 'seq', A[3], 'hash', A[4])
  redis.call('PEXPIRE', K[2], A[6])
  for i = 3, #K do
    redis.call('RPUSH', K[i], id)
    redis.call('PEXPIRE', K[i], A[6])
  end
  return id
end
`

// appendScript appends a record to its chain once (StreamAppendLua).
var appendScript = redis.NewScript(StreamAppendLua + `
local r = audit_check(KEYS, ARGV)
if r then
  return r
end
return audit_append(KEYS, ARGV)
`)

// Write implements io.Writer for Log: p is one record line.
func (w *RedisWriter) Write(p []byte) (int, error) {
	keys, args, err := w.AppendCall(p)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	if w.durable != nil {
		err = w.durable.Run(ctx, w.c, appendScript, keys, args...).Err()
	} else {
		err = appendScript.Run(ctx, w.c, keys, args...).Err()
	}
	if err != nil {
		return 0, fmt.Errorf("writing audit event to redis: %w", err)
	}
	return len(p), nil
}

// AppendCall is the keys and arguments of StreamAppendLua for one record
// line p of this writer's chain.
func (w *RedisWriter) AppendCall(p []byte) (keys []string, args []any, err error) {
	line := strings.TrimSuffix(string(p), "\n")
	var rec struct {
		Seq   uint64 `json:"seq"`
		Prev  string `json:"prev"`
		Hash  string `json:"hash"`
		Event struct {
			TaskID string `json:"task_id"`
			Detail struct {
				// Tasks names the tasks of a record about several (a
				// reaped batch); each timeline shows it.
				Tasks []string `json:"tasks"`
			} `json:"detail"`
		} `json:"event"`
	}
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		return nil, nil, fmt.Errorf("audit stream: line is not a record: %w", err)
	}
	keys = []string{w.stream(), w.head()}
	seen := map[string]bool{"": true}
	for _, id := range append([]string{rec.Event.TaskID}, rec.Event.Detail.Tasks...) {
		if !seen[id] {
			seen[id] = true
			keys = append(keys, w.taskIndex(id))
		}
	}
	minID := strconv.FormatInt(w.now().Add(-w.ttl).UnixMilli(), 10)
	return keys, []any{w.chain, line, rec.Seq, rec.Hash, rec.Prev, w.ttl.Milliseconds(), w.maxLen, minID}, nil
}

// Head implements the Log's resync after a failed write: the seq and hash
// of the chain's last record in Redis, ok false when the chain has none.
func (w *RedisWriter) Head() (seq uint64, hash string, ok bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	v, err := w.c.HMGet(ctx, w.head(), "seq", "hash").Result()
	if err != nil {
		return 0, "", false, fmt.Errorf("reading the audit chain head: %w", err)
	}
	s, _ := v[0].(string)
	h, _ := v[1].(string)
	if s == "" || h == "" {
		return 0, "", false, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, "", false, fmt.Errorf("audit chain head seq %q: %w", s, err)
	}
	return n, h, true, nil
}

// Timeline implements incident.TimelineReader: the task's events in the
// order the stream received them.
func (w *RedisWriter) Timeline(ctx context.Context, taskID string) ([]broker.Event, error) {
	ids, err := w.c.LRange(ctx, w.taskIndex(taskID), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the task's audit index: %w: %w", broker.ErrUnavailable, err)
	}
	cmds := make([]*redis.XMessageSliceCmd, len(ids))
	_, err = w.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = p.XRange(ctx, w.stream(), id, id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading audit events: %w: %w", broker.ErrUnavailable, err)
	}
	out := make([]broker.Event, 0, len(ids))
	for _, c := range cmds {
		for _, m := range c.Val() {
			line, _ := m.Values["line"].(string)
			var rec Record
			var ev broker.Event
			if json.Unmarshal([]byte(line), &rec) != nil || json.Unmarshal(rec.Event, &ev) != nil {
				return nil, fmt.Errorf("audit stream entry %s is not a record", m.ID)
			}
			out = append(out, ev)
		}
	}
	return out, nil
}

// StreamReport is what VerifyStream found.
type StreamReport struct {
	Events int
	Chains map[string]uint64 // chain id → last seq
	// Duplicates counts entries that repeat the entry before them in their
	// chain byte for byte (same seq, same hash): a retried append written
	// before appends were idempotent, not an edit.
	Duplicates int
	// Trimmed lists the chains whose first surviving entry is past seq 1
	// because retention trimmed the stream (chain id → first seq seen).
	Trimmed map[string]uint64
}

// VerifyStream checks every chain in the audit stream under prefix, from
// its first entry: each chain starts at seq 1 from the genesis hash (or,
// once retention has trimmed the stream, at its first surviving entry) and
// every link must hold. A repeat of a chain's previous entry (same seq and
// hash) is counted as a duplicate, not as tampering. It names the first bad
// entry. The stream is a bounded copy: the audit file is the durable one.
func VerifyStream(ctx context.Context, c redis.UniversalClient, prefix string) (StreamReport, error) {
	if prefix == "" {
		prefix = "valet"
	}
	type state struct {
		prev string
		want uint64
	}
	chains := map[string]*state{}
	rep := StreamReport{Chains: map[string]uint64{}, Trimmed: map[string]uint64{}}
	trimmed := false
	info, err := c.XInfoStream(ctx, prefix+":audit").Result()
	switch {
	case err != nil && !strings.Contains(err.Error(), "no such key"):
		return rep, fmt.Errorf("reading audit stream: %w", err)
	case err == nil:
		trimmed = info.EntriesAdded > info.Length || (info.MaxDeletedEntryID != "" && info.MaxDeletedEntryID != "0-0")
	}
	// Pages are small: a stream written before events were bounded may
	// hold entries of megabytes.
	const page = 200
	start := "-"
	for {
		msgs, err := c.XRangeN(ctx, prefix+":audit", start, "+", page).Result()
		if err != nil {
			return rep, fmt.Errorf("reading audit stream: %w", err)
		}
		for _, m := range msgs {
			start = "(" + m.ID
			chain, _ := m.Values["chain"].(string)
			line, _ := m.Values["line"].(string)
			var rec Record
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				return rep, fmt.Errorf("%w: entry %s (chain %s) is not a record: %v", ErrBroken, m.ID, chain, err)
			}
			if rec.Hash != hashOf(rec) {
				return rep, fmt.Errorf("%w: entry %s (chain %s, seq %d) was altered: its hash does not match its content", ErrBroken, m.ID, chain, rec.Seq)
			}
			st := chains[chain]
			if st == nil {
				st = &state{prev: genesis, want: 1}
				if trimmed && rec.Seq > 1 {
					st = &state{prev: rec.Prev, want: rec.Seq}
					rep.Trimmed[chain] = rec.Seq
				}
				chains[chain] = st
			}
			if rec.Seq+1 == st.want && rec.Hash == st.prev {
				rep.Duplicates++
				continue
			}
			switch {
			case rec.Prev != st.prev:
				return rep, fmt.Errorf("%w: entry %s (chain %s, seq %d) does not follow the entry before it: an event was removed, inserted or moved", ErrBroken, m.ID, chain, rec.Seq)
			case rec.Seq != st.want:
				return rep, fmt.Errorf("%w: entry %s (chain %s) has seq %d, want %d", ErrBroken, m.ID, chain, rec.Seq, st.want)
			}
			st.prev, st.want = rec.Hash, st.want+1
			rep.Events++
			rep.Chains[chain] = rec.Seq
		}
		if len(msgs) < page {
			return rep, nil
		}
	}
}
