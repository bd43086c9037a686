package revocation

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
)

// Keys of broker.Records:
//
//	valet:rec:<kind>:<id>                string: one record (JSON), until its expiry
//	valet:recidx:<kind>                  zset: ids of kind scored by expiry (unix ms), trimmed as records are put
//	valet:list:<kind>:<id>               list: items (JSON), oldest first, until the latest expiry given
//	valet:hold:<kind>:<id>               zset: held members scored by their expiry (unix ms), until the latest
func (k keys) rec(kind, id string) string  { return k.prefix + ":rec:" + part(kind) + ":" + part(id) }
func (k keys) hold(kind, id string) string { return k.prefix + ":hold:" + part(kind) + ":" + part(id) }
func (k keys) recIndex(kind string) string { return k.prefix + ":recidx:" + part(kind) }
func (k keys) list(kind, id string) string { return k.prefix + ":list:" + part(kind) + ":" + part(id) }

var _ broker.Records = (*RedisLedger)(nil)

// putScript stores a new record and indexes it. KEYS: record, index.
// ARGV: id, record, expire-at ms.
var putScript = redis.NewScript(luaCommon + `
if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PXAT', ARGV[3]) == false then
  return redis.error_reply('VALET_EXISTS')
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms())
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
expire_at_least(KEYS[2], ARGV[3])
return 1
`)

// Put implements broker.Records.
func (l *RedisLedger) Put(ctx context.Context, kind, id string, rec []byte, until time.Time) error {
	if !until.After(time.Now()) {
		return fmt.Errorf("putting %s %s: expiry %s has passed", kind, id, until)
	}
	err := putScript.Run(ctx, l.c, []string{l.keys.rec(kind, id), l.keys.recIndex(kind)}, id, rec, until.UnixMilli()).Err()
	if err != nil && strings.Contains(err.Error(), "VALET_EXISTS") {
		return fmt.Errorf("putting %s %s: %w", kind, id, broker.ErrExists)
	}
	return wrapErr("putting "+kind+" "+id, err)
}

// Get implements broker.Records.
func (l *RedisLedger) Get(ctx context.Context, kind, id string) ([]byte, error) {
	b, err := l.c.Get(ctx, l.keys.rec(kind, id)).Bytes()
	if err != nil {
		return nil, wrapErr("reading "+kind+" "+id, err)
	}
	return b, nil
}

// swapScript: KEYS: record. ARGV: old, next.
var swapScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == false then return redis.error_reply('VALET_NOT_FOUND') end
if cur ~= ARGV[1] then return redis.error_reply('VALET_CHANGED') end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
`)

// Swap implements broker.Records.
func (l *RedisLedger) Swap(ctx context.Context, kind, id string, old, next []byte) error {
	err := swapScript.Run(ctx, l.c, []string{l.keys.rec(kind, id)}, old, next).Err()
	switch {
	case err == nil:
		return nil
	case strings.Contains(err.Error(), "VALET_NOT_FOUND"):
		return fmt.Errorf("swapping %s %s: %w", kind, id, broker.ErrNotFound)
	case strings.Contains(err.Error(), "VALET_CHANGED"):
		return fmt.Errorf("swapping %s %s: %w", kind, id, broker.ErrNotActive)
	}
	return wrapErr("swapping "+kind+" "+id, err)
}

// List implements broker.Records: the live ids from the index, then their
// records (ids whose record just expired are skipped).
func (l *RedisLedger) List(ctx context.Context, kind string, limit int) ([][]byte, error) {
	ids, err := l.c.ZRangeArgs(ctx, redis.ZRangeArgs{Key: l.keys.recIndex(kind), Start: fmt.Sprint(time.Now().UnixMilli()),
		Stop: "+inf", ByScore: true, Count: int64(limit)}).Result()
	if err != nil {
		return nil, wrapErr("listing "+kind, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = l.keys.rec(kind, id)
	}
	vals, err := l.c.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, wrapErr("listing "+kind, err)
	}
	var out [][]byte
	for _, v := range vals {
		if s, ok := v.(string); ok {
			out = append(out, []byte(s))
		}
	}
	return out, nil
}

// appendScript: KEYS: list. ARGV: item, expire-at ms, max.
var appendScript = redis.NewScript(luaCommon + `
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.error_reply('VALET_EXISTS')
end
redis.call('RPUSH', KEYS[1], ARGV[1])
expire_at_least(KEYS[1], ARGV[2])
return 1
`)

// Append implements broker.Records.
func (l *RedisLedger) Append(ctx context.Context, kind, id string, rec []byte, until time.Time, max int) error {
	err := appendScript.Run(ctx, l.c, []string{l.keys.list(kind, id)}, rec, until.UnixMilli(), max).Err()
	if err != nil && strings.Contains(err.Error(), "VALET_EXISTS") {
		return fmt.Errorf("appending to %s %s: list is full: %w", kind, id, broker.ErrExists)
	}
	return wrapErr("appending to "+kind+" "+id, err)
}

// holdScript: KEYS: set. ARGV: member, expire-at ms, max.
var holdScript = redis.NewScript(luaCommon + `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return redis.error_reply('VALET_EXISTS')
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
expire_at_least(KEYS[1], ARGV[2])
return 1
`)

// Hold implements broker.Records.
func (l *RedisLedger) Hold(ctx context.Context, kind, id, member string, until time.Time, max int) error {
	err := holdScript.Run(ctx, l.c, []string{l.keys.hold(kind, id)}, member, until.UnixMilli(), max).Err()
	if err != nil && strings.Contains(err.Error(), "VALET_EXISTS") {
		return fmt.Errorf("holding %s %s: %d places taken: %w", kind, id, max, broker.ErrExists)
	}
	return wrapErr("holding "+kind+" "+id, err)
}

// Release implements broker.Records.
func (l *RedisLedger) Release(ctx context.Context, kind, id, member string) error {
	return wrapErr("releasing "+kind+" "+id, l.c.ZRem(ctx, l.keys.hold(kind, id), member).Err())
}

// Items implements broker.Records.
func (l *RedisLedger) Items(ctx context.Context, kind, id string, limit int) ([][]byte, error) {
	vals, err := l.c.LRange(ctx, l.keys.list(kind, id), 0, int64(limit)-1).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, wrapErr("reading "+kind+" "+id, err)
	}
	out := make([][]byte, len(vals))
	for i, v := range vals {
		out[i] = []byte(v)
	}
	return out, nil
}
