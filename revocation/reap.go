package revocation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
)

// endDueScript takes up to a batch of due tasks off the deadlines and ends
// each that is still active as the End script does: state, deny entries,
// feed entries. Taking them off the deadlines in the same atomic step is
// the claim: two reapers (replicas) never get the same task. Answers one
// {id, task hash, cred records} per task it ended.
//
// KEYS: deadlines, feed, reaped zset. ARGV: due-by ms, limit, state,
// reason, ended-at ms, key prefix, feed max length, feed trim-below ms, feed
// life ms, batch id, lease ms, batch record life ms.
var endDueScript = redis.NewScript(luaCommon + `
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
local now = now_ms()
local fed = false
local deny = ARGV[6] .. ':deny:'
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local tk = ARGV[6] .. ':task:' .. part(id)
  if redis.call('HGET', tk, 'state') == 'active' then
    redis.call('HSET', tk, 'state', ARGV[3], 'end_reason', ARGV[4], 'ended_at', ARGV[5])
    local creds = redis.call('LRANGE', tk .. ':creds', 0, -1)
    for _, rec in ipairs(creds) do
      local c = cjson.decode(rec)
      local ttl = math.max(tonumber(c.expires_at) - now, 1000)
      redis.call('SET', deny .. part(c.id), id, 'PX', string.format('%d', ttl))
      if c.kind == 'jwt' then
        redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'type', 'revoked', 'jti', c.id, 'task_id', id,
          'exp', string.format('%d', math.floor(tonumber(c.expires_at) / 1000)))
        fed = true
      end
    end
    table.insert(out, {id, redis.call('HGETALL', tk), creds})
  end
end
if fed then
  redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[8])
  expire_at_least(KEYS[2], now + tonumber(ARGV[9]))
end
if #out > 0 then
  -- Until the caller acknowledges its audit record, the batch waits here
  -- under a lease; a reaper of another replica audits it if it expires.
  local ids, creds = {}, {}
  for _, e in ipairs(out) do
    table.insert(ids, e[1])
    for _, rec in ipairs(e[3]) do table.insert(creds, cjson.decode(rec).id) end
  end
  redis.call('SET', KEYS[3] .. ':' .. ARGV[10], cjson.encode({tasks = ids, credentials = creds, ended_at = tonumber(ARGV[5])}), 'PX', ARGV[12])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[11]), ARGV[10])
  expire_at_least(KEYS[3], now + tonumber(ARGV[12]))
end
return out
`)

// claimUnauditedScript re-leases up to 16 batches whose lease expired and
// answers {batch id, record} for each; entries whose record expired go.
// KEYS: reaped zset. ARGV: lease ms. Leases run on the Redis clock.
var claimUnauditedScript = redis.NewScript(luaCommon + `
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 16)
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('GET', KEYS[1] .. ':' .. id)
  if rec then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
    table.insert(out, {id, rec})
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
`)

func (k keys) reaped() string { return k.prefix + ":reaped" }

// DefaultReapLease is how long a reaper has to write a batch's audit
// record before another replica's reaper writes it instead.
const DefaultReapLease = 30 * time.Second

// AckReaped implements broker.Ledger (its DueEnder part).
func (l *RedisLedger) AckReaped(ctx context.Context, batch string) error {
	_, err := l.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.ZRem(ctx, l.keys.reaped(), batch)
		p.Del(ctx, l.keys.reaped()+":"+batch)
		return nil
	})
	return wrapErr("acknowledging reaped batch "+batch, err)
}

// Unaudited implements broker.Ledger (its DueEnder part).
func (l *RedisLedger) Unaudited(ctx context.Context, _ time.Time) ([]broker.ReapedBatch, error) {
	reply, err := claimUnauditedScript.Run(ctx, l.c, []string{l.keys.reaped()}, l.reapLease.Milliseconds()).Slice()
	if err != nil {
		return nil, wrapErr("claiming unaudited reaped batches", err)
	}
	var out []broker.ReapedBatch
	for _, r := range reply {
		parts, err := stringSlice(r)
		if err != nil || len(parts) != 2 {
			return out, fmt.Errorf("claiming unaudited reaped batches: unexpected reply %v", r)
		}
		var rec struct {
			Tasks, Credentials []string
			EndedAt            int64 `json:"ended_at"`
		}
		if err := json.Unmarshal([]byte(parts[1]), &rec); err != nil {
			return out, fmt.Errorf("decoding reaped batch %s: %w", parts[0], err)
		}
		out = append(out, broker.ReapedBatch{ID: parts[0], Tasks: rec.Tasks, Credentials: rec.Credentials, EndedAt: fromMs(rec.EndedAt)})
	}
	return out, nil
}

// EndDue implements broker.Ledger (its DueEnder part) in one script.
func (l *RedisLedger) EndDue(ctx context.Context, now time.Time, limit int, reason string) ([]broker.EndedTask, error) {
	if limit <= 0 {
		return nil, nil
	}
	batch := newBatchID()
	reply, err := endDueScript.Run(ctx, l.c, []string{l.keys.deadlines(), l.keys.feed(), l.keys.reaped()},
		strconv.FormatInt(now.UnixMilli(), 10), limit, string(broker.StateExpired), reason, now.UnixMilli(), l.keys.prefix,
		FeedMaxLen, time.Now().Add(-broker.EpochTTL).UnixMilli(), broker.EpochTTL.Milliseconds(),
		batch, l.reapLease.Milliseconds(), max(l.retention, l.reapLease).Milliseconds()).Slice()
	if err != nil {
		return nil, wrapErr("ending due tasks", err)
	}
	out := make([]broker.EndedTask, 0, len(reply))
	for _, r := range reply {
		parts, ok := r.([]any)
		if !ok || len(parts) != 3 {
			return out, fmt.Errorf("ending due tasks: unexpected script reply %v", r)
		}
		id, _ := parts[0].(string)
		hash, err := stringMap(parts[1])
		if err != nil {
			return out, fmt.Errorf("ending due tasks: %w", err)
		}
		recs, err := stringSlice(parts[2])
		if err != nil {
			return out, fmt.Errorf("ending due tasks: %w", err)
		}
		t, creds, err := decodeTask(id, hash, recs)
		if err != nil {
			return out, err
		}
		out = append(out, broker.EndedTask{Task: t, Creds: creds, Batch: batch})
	}
	return out, nil
}

func newBatchID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// EndDue implements broker.Ledger (its DueEnder part).
func (l *MemoryLedger) EndDue(ctx context.Context, now time.Time, limit int, reason string) ([]broker.EndedTask, error) {
	ids, err := l.Due(ctx, now, limit)
	if err != nil {
		return nil, err
	}
	var out []broker.EndedTask
	for _, id := range slices.Clone(ids) {
		t, creds, err := l.End(ctx, id, broker.StateExpired, reason, now)
		if err != nil {
			continue // ended meanwhile, or its records expired
		}
		out = append(out, broker.EndedTask{Task: t, Creds: creds})
	}
	return out, nil
}

// AckReaped implements broker.Ledger (its DueEnder part): the memory
// ledger keeps no batches.
func (l *MemoryLedger) AckReaped(context.Context, string) error { return nil }

// Unaudited implements broker.Ledger (its DueEnder part): the memory
// ledger dies with its broker, so no other reaper can take over.
func (l *MemoryLedger) Unaudited(context.Context, time.Time) ([]broker.ReapedBatch, error) {
	return nil, nil
}
