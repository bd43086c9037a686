package revocation

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
)

var _ broker.DueEnder = (*RedisLedger)(nil)
var _ broker.DueEnder = (*MemoryLedger)(nil)

// endDueScript takes up to a batch of due tasks off the deadlines and ends
// each that is still active as the End script does: state, deny entries,
// feed entries. Taking them off the deadlines in the same atomic step is
// the claim: two reapers (replicas) never get the same task. Answers one
// {id, task hash, cred records} per task it ended.
//
// KEYS: deadlines, feed. ARGV: due-by ms, limit, state, reason, ended-at
// ms, key prefix, feed max length, feed trim-below ms, feed life ms.
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
return out
`)

// EndDue implements broker.DueEnder in one script.
func (l *RedisLedger) EndDue(ctx context.Context, now time.Time, limit int, reason string) ([]broker.EndedTask, error) {
	if limit <= 0 {
		return nil, nil
	}
	reply, err := endDueScript.Run(ctx, l.c, []string{l.keys.deadlines(), l.keys.feed()},
		strconv.FormatInt(now.UnixMilli(), 10), limit, string(broker.StateExpired), reason, now.UnixMilli(), l.keys.prefix,
		FeedMaxLen, time.Now().Add(-broker.EpochTTL).UnixMilli(), broker.EpochTTL.Milliseconds()).Slice()
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
		out = append(out, broker.EndedTask{Task: t, Creds: creds})
	}
	return out, nil
}

// EndDue implements broker.DueEnder.
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
