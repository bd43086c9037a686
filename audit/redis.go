package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
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

// RedisWriter is an audit sink that appends each line of a Log to a Redis
// stream (<prefix>:audit), tagged with the chain it belongs to, and indexes
// lines by task (<prefix>:audit:task:<id>) for timelines. Each broker
// process writes its own chain (a random chain id), so replicas sharing one
// stream never interleave one chain. Use it as NewLog(NewRedisWriter(...)).
type RedisWriter struct {
	c       redis.UniversalClient
	prefix  string
	chain   string
	timeout time.Duration
	// taskTTL is how long a task's index of audit entries is kept.
	taskTTL time.Duration
}

// NewRedisWriter writes to the stream under prefix (default "valet").
func NewRedisWriter(c redis.UniversalClient, prefix string) (*RedisWriter, error) {
	if c == nil {
		return nil, errors.New("audit: redis client cannot be nil")
	}
	if prefix == "" {
		prefix = "valet"
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &RedisWriter{c: c, prefix: prefix, chain: hex.EncodeToString(b[:]), timeout: 2 * time.Second, taskTTL: 7 * 24 * time.Hour}, nil
}

// Chain is this writer's chain id.
func (w *RedisWriter) Chain() string { return w.chain }

func (w *RedisWriter) stream() string { return w.prefix + ":audit" }
func (w *RedisWriter) taskIndex(id string) string {
	return w.prefix + ":audit:task:" + strings.NewReplacer("%", "%25", ":", "%3A").Replace(id)
}

// appendScript adds a line to the stream and, when it names a task, its
// stream id to the task's index. KEYS: stream[, task index]. ARGV: chain,
// line, index ttl ms.
var appendScript = redis.NewScript(`
local id = redis.call('XADD', KEYS[1], '*', 'chain', ARGV[1], 'line', ARGV[2])
if KEYS[2] then
  redis.call('RPUSH', KEYS[2], id)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return id
`)

// Write implements io.Writer for Log: p is one record line.
func (w *RedisWriter) Write(p []byte) (int, error) {
	line := strings.TrimSuffix(string(p), "\n")
	var rec struct {
		Event struct {
			TaskID string `json:"task_id"`
		} `json:"event"`
	}
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		return 0, fmt.Errorf("audit stream: line is not a record: %w", err)
	}
	keys := []string{w.stream()}
	if rec.Event.TaskID != "" {
		keys = append(keys, w.taskIndex(rec.Event.TaskID))
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.timeout)
	defer cancel()
	if err := appendScript.Run(ctx, w.c, keys, w.chain, line, w.taskTTL.Milliseconds()).Err(); err != nil {
		return 0, fmt.Errorf("writing audit event to redis: %w", err)
	}
	return len(p), nil
}

// Timeline implements broker.TimelineReader: the task's events in the
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
}

// VerifyStream checks every chain in the audit stream under prefix, from
// its first entry: each chain must start at seq 1 from the genesis hash and
// every link must hold. It names the first bad entry.
func VerifyStream(ctx context.Context, c redis.UniversalClient, prefix string) (StreamReport, error) {
	if prefix == "" {
		prefix = "valet"
	}
	type state struct {
		prev string
		want uint64
	}
	chains := map[string]*state{}
	rep := StreamReport{Chains: map[string]uint64{}}
	start := "-"
	for {
		msgs, err := c.XRangeN(ctx, prefix+":audit", start, "+", 5000).Result()
		if err != nil {
			return rep, fmt.Errorf("reading audit stream: %w", err)
		}
		for _, m := range msgs {
			chain, _ := m.Values["chain"].(string)
			line, _ := m.Values["line"].(string)
			st := chains[chain]
			if st == nil {
				st = &state{prev: genesis, want: 1}
				chains[chain] = st
			}
			var rec Record
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				return rep, fmt.Errorf("%w: entry %s (chain %s) is not a record: %v", ErrBroken, m.ID, chain, err)
			}
			switch {
			case rec.Hash != hashOf(rec):
				return rep, fmt.Errorf("%w: entry %s (chain %s, seq %d) was altered: its hash does not match its content", ErrBroken, m.ID, chain, rec.Seq)
			case rec.Prev != st.prev:
				return rep, fmt.Errorf("%w: entry %s (chain %s, seq %d) does not follow the entry before it: an event was removed, inserted or moved", ErrBroken, m.ID, chain, rec.Seq)
			case rec.Seq != st.want:
				return rep, fmt.Errorf("%w: entry %s (chain %s) has seq %d, want %d", ErrBroken, m.ID, chain, rec.Seq, st.want)
			}
			st.prev, st.want = rec.Hash, st.want+1
			rep.Events++
			rep.Chains[chain] = rec.Seq
			start = "(" + m.ID
		}
		if len(msgs) < 5000 {
			return rep, nil
		}
	}
}
