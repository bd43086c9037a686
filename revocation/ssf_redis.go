package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/ssf"
)

// SSF transmitter keys (with the default prefix):
//
//	valet:ssf:streams             set: stream ids
//	valet:ssf:stream:<id>         string: one stream (JSON); no TTL, like a control: it lasts until deleted
//	valet:ssf:q:<id>              zset: queued SET jtis scored by enqueue time (unix ms)
//	valet:ssf:qset:<id>           hash: jti → queued SET (JSON)
//	valet:ssf:cursor              string: the revocation feed cursor the transmitter resumes from
//	valet:ssf:lease               string: the broker transmitting (PX: the lease)
//
// A stream's queue keys expire SSFQueueRetention after the last SET queued:
// a SET nobody took for that long is stale. The cursor expires with the
// feed (broker.EpochTTL), whose entries it points into.

// SSFQueueRetention is how long a stream's queue outlives its last SET.
const SSFQueueRetention = 24 * time.Hour

// RedisSSFStore is the SSF transmitter's store in Redis, shared by every
// broker. Safe for concurrent use.
type RedisSSFStore struct {
	c      redis.UniversalClient
	prefix string
	now    func() time.Time
}

var _ ssf.Store = (*RedisSSFStore)(nil)

// NewRedisSSFStore returns the SSF store under prefix (default "valet").
func NewRedisSSFStore(c redis.UniversalClient, prefix string) (*RedisSSFStore, error) {
	if c == nil {
		return nil, errors.New("revocation: redis client cannot be nil")
	}
	if prefix == "" {
		prefix = "valet"
	}
	return &RedisSSFStore{c: c, prefix: prefix, now: time.Now}, nil
}

func (s *RedisSSFStore) key(parts ...string) string {
	k := s.prefix + ":ssf"
	for _, p := range parts {
		k += ":" + part(p)
	}
	return k
}

func (s *RedisSSFStore) streamKey(id string) string { return s.prefix + ":ssf:stream:" + part(id) }
func (s *RedisSSFStore) qKey(id string) string      { return s.prefix + ":ssf:q:" + part(id) }
func (s *RedisSSFStore) qsetKey(id string) string   { return s.prefix + ":ssf:qset:" + part(id) }
func (s *RedisSSFStore) qseqKey(id string) string   { return s.prefix + ":ssf:qseq:" + part(id) }

// PutStream implements ssf.Store.
func (s *RedisSSFStore) PutStream(ctx context.Context, st ssf.Stream) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encoding stream: %w", err)
	}
	_, err = s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, s.streamKey(st.ID), b, 0)
		p.SAdd(ctx, s.key("streams"), st.ID)
		return nil
	})
	return wrapErr("saving ssf stream", err)
}

// Stream implements ssf.Store.
func (s *RedisSSFStore) Stream(ctx context.Context, id string) (ssf.Stream, error) {
	b, err := s.c.Get(ctx, s.streamKey(id)).Bytes()
	if err != nil {
		return ssf.Stream{}, wrapErr("reading ssf stream", err)
	}
	var st ssf.Stream
	if err := json.Unmarshal(b, &st); err != nil {
		return ssf.Stream{}, fmt.Errorf("decoding ssf stream: %w", err)
	}
	return st, nil
}

// Streams implements ssf.Store.
func (s *RedisSSFStore) Streams(ctx context.Context) ([]ssf.Stream, error) {
	ids, err := s.c.SMembers(ctx, s.key("streams")).Result()
	if err != nil {
		return nil, wrapErr("listing ssf streams", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.streamKey(id)
	}
	vals, err := s.c.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, wrapErr("listing ssf streams", err)
	}
	out := make([]ssf.Stream, 0, len(vals))
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		var st ssf.Stream
		if err := json.Unmarshal([]byte(str), &st); err != nil {
			return nil, fmt.Errorf("decoding ssf stream: %w", err)
		}
		out = append(out, st)
	}
	return out, nil
}

// DeleteStream implements ssf.Store.
func (s *RedisSSFStore) DeleteStream(ctx context.Context, id string) (bool, error) {
	var del *redis.IntCmd
	_, err := s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		del = p.Del(ctx, s.streamKey(id))
		p.SRem(ctx, s.key("streams"), id)
		p.Del(ctx, s.qKey(id), s.qsetKey(id), s.qseqKey(id))
		return nil
	})
	if err != nil {
		return false, wrapErr("deleting ssf stream", err)
	}
	return del.Val() > 0, nil
}

// KEYS: queue zset, queue hash. ARGV: jti, queued JSON, max, score ms, life ms.
var ssfEnqueueScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
-- Ordered by a sequence, not the clock: two SETs queued in one
-- millisecond (a freeze and its lift) must leave in the order they came.
redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[5])
return 1`)

// Enqueue implements ssf.Store.
func (s *RedisSSFStore) Enqueue(ctx context.Context, streamID string, q ssf.Queued, max int) (bool, error) {
	b, err := json.Marshal(q)
	if err != nil {
		return false, fmt.Errorf("encoding queued SET: %w", err)
	}
	n, err := ssfEnqueueScript.Run(ctx, s.c, []string{s.qKey(streamID), s.qsetKey(streamID), s.qseqKey(streamID)},
		q.JTI, b, max, s.now().UnixMilli(), SSFQueueRetention.Milliseconds()).Int()
	if err != nil {
		return false, wrapErr("queueing SET", err)
	}
	return n == 1, nil
}

// Pending implements ssf.Store.
func (s *RedisSSFStore) Pending(ctx context.Context, streamID string, limit int) ([]ssf.Queued, error) {
	if limit <= 0 {
		return nil, nil
	}
	jtis, err := s.c.ZRange(ctx, s.qKey(streamID), 0, int64(limit-1)).Result()
	if err != nil {
		return nil, wrapErr("reading SET queue", err)
	}
	if len(jtis) == 0 {
		return nil, nil
	}
	vals, err := s.c.HMGet(ctx, s.qsetKey(streamID), jtis...).Result()
	if err != nil {
		return nil, wrapErr("reading SET queue", err)
	}
	out := make([]ssf.Queued, 0, len(vals))
	for _, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		var q ssf.Queued
		if err := json.Unmarshal([]byte(str), &q); err != nil {
			return nil, fmt.Errorf("decoding queued SET: %w", err)
		}
		out = append(out, q)
	}
	return out, nil
}

// Ack implements ssf.Store.
func (s *RedisSSFStore) Ack(ctx context.Context, streamID string, jtis []string) (int, error) {
	if len(jtis) == 0 {
		return 0, nil
	}
	var del *redis.IntCmd
	_, err := s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		members := make([]any, len(jtis))
		for i, j := range jtis {
			members[i] = j
		}
		p.ZRem(ctx, s.qKey(streamID), members...)
		del = p.HDel(ctx, s.qsetKey(streamID), jtis...)
		return nil
	})
	if err != nil {
		return 0, wrapErr("acknowledging SETs", err)
	}
	return int(del.Val()), nil
}

var ssfRetryScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1`)

// Retry implements ssf.Store.
func (s *RedisSSFStore) Retry(ctx context.Context, streamID string, q ssf.Queued) error {
	b, err := json.Marshal(q)
	if err != nil {
		return fmt.Errorf("encoding queued SET: %w", err)
	}
	return wrapErr("saving SET retry", ssfRetryScript.Run(ctx, s.c, []string{s.qsetKey(streamID)}, q.JTI, b).Err())
}

// Cursor implements ssf.Store.
func (s *RedisSSFStore) Cursor(ctx context.Context) (string, error) {
	c, err := s.c.Get(ctx, s.key("cursor")).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	return c, wrapErr("reading ssf cursor", err)
}

// SetCursor implements ssf.Store.
func (s *RedisSSFStore) SetCursor(ctx context.Context, cursor string) error {
	return wrapErr("saving ssf cursor", s.c.Set(ctx, s.key("cursor"), cursor, broker.EpochTTL).Err())
}

var ssfLeaseScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0`)

// Lease implements ssf.Store.
func (s *RedisSSFStore) Lease(ctx context.Context, owner string, ttl time.Duration) (bool, error) {
	n, err := ssfLeaseScript.Run(ctx, s.c, []string{s.key("lease")}, owner, max(ttl.Milliseconds(), 1)).Int()
	if err != nil {
		return false, wrapErr("taking ssf lease", err)
	}
	return n == 1, nil
}
