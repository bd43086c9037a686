package revocation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
)

// endManyScript ends a batch of tasks as the End script ends one: for each
// id, an active task gets its final state, leaves the deadlines, and every
// credential goes on the deny list, each JWT on the revocation feed too. It
// answers per id {"ended"|"not_active", task hash, cred records, children}
// or {"not_found"} (and drops a missing task from the deadlines, as End
// does). One script per batch of at most broker.MaxEndMany tasks; per task
// it runs HGETALL, LRANGE, SMEMBERS, and for an active one HSET, then SET
// per credential and XADD per JWT; one ZREM takes the batch off the
// deadlines.
//
// KEYS: deadlines, revocation feed. ARGV: state, reason, ended-at ms, key
// prefix, feed max length, feed trim-below ms, feed life ms, then the ids.
var endManyScript = redis.NewScript(luaCommon + `
local now = now_ms()
local fed = false
local deny = ARGV[4] .. ':deny:'
local out = {}
local gone = {}
for i = 8, #ARGV do
  local id = ARGV[i]
  local tk = ARGV[4] .. ':task:' .. part(id)
  local hash = redis.call('HGETALL', tk)
  local state
  for j = 1, #hash, 2 do
    if hash[j] == 'state' then
      state = hash[j + 1]
      break
    end
  end
  if not state then
    table.insert(gone, id)
    table.insert(out, {'not_found'})
  else
    local creds = redis.call('LRANGE', tk .. ':creds', 0, -1)
    local kids = redis.call('SMEMBERS', tk .. ':children')
    local outcome = 'not_active'
    if state == 'active' then
      outcome = 'ended'
      redis.call('HSET', tk, 'state', ARGV[1], 'end_reason', ARGV[2], 'ended_at', ARGV[3])
      -- The reply's hash is the one read above with the fields just
      -- set appended: the later of a repeated field is the one read.
      table.insert(hash, 'state'); table.insert(hash, ARGV[1])
      table.insert(hash, 'end_reason'); table.insert(hash, ARGV[2])
      table.insert(hash, 'ended_at'); table.insert(hash, ARGV[3])
      table.insert(gone, id)
      for _, rec in ipairs(creds) do
        local c = cjson.decode(rec)
        local ttl = math.max(tonumber(c.expires_at) - now, 1000)
        redis.call('SET', deny .. part(c.id), id, 'PX', string.format('%d', ttl))
        if c.kind == 'jwt' then
          redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'type', 'revoked', 'jti', c.id, 'task_id', id,
            'exp', string.format('%d', math.floor(tonumber(c.expires_at) / 1000)))
          fed = true
        end
      end
    end
    table.insert(out, {outcome, hash, creds, kids})
  end
end
-- Off the deadlines in one command: every task ended here, and every id
-- whose records are gone (as End drops it).
if #gone > 0 then
  redis.call('ZREM', KEYS[1], unpack(gone))
end
if fed then
  redis.call('XTRIM', KEYS[2], 'MINID', '~', ARGV[6])
  expire_at_least(KEYS[2], now + tonumber(ARGV[7]))
end
return out
`)

// EndMany implements broker.Ledger (its ManyEnder part) in one script.
func (l *RedisLedger) EndMany(ctx context.Context, ids []string, state broker.State, reason string, at time.Time) ([]broker.EndResult, error) {
	if err := validateEndMany(ids, state, at); err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 7+len(ids))
	args = append(args, string(state), reason, at.UnixMilli(), l.keys.prefix,
		FeedMaxLen, time.Now().Add(-broker.EpochTTL).UnixMilli(), broker.EpochTTL.Milliseconds())
	for _, id := range ids {
		args = append(args, id)
	}
	reply, err := endManyScript.Run(ctx, l.c, []string{l.keys.deadlines(), l.keys.feed()}, args...).Slice()
	if err != nil {
		return nil, wrapErr(fmt.Sprintf("ending %d tasks", len(ids)), err)
	}
	if len(reply) != len(ids) {
		return nil, fmt.Errorf("ending %d tasks: the script answered %d", len(ids), len(reply))
	}
	out := make([]broker.EndResult, len(ids))
	for i, r := range reply {
		parts, ok := r.([]any)
		if !ok || len(parts) == 0 {
			return nil, fmt.Errorf("ending task %s: unexpected script reply %v", ids[i], r)
		}
		outcome, _ := parts[0].(string)
		out[i].Outcome = broker.EndOutcome(outcome)
		if out[i].Outcome == broker.EndedNotFound {
			continue
		}
		if len(parts) != 4 {
			return nil, fmt.Errorf("ending task %s: unexpected script reply %v", ids[i], r)
		}
		hash, err := stringMap(parts[1])
		if err != nil {
			return nil, fmt.Errorf("ending task %s: %w", ids[i], err)
		}
		recs, err := stringSlice(parts[2])
		if err != nil {
			return nil, fmt.Errorf("ending task %s: %w", ids[i], err)
		}
		if out[i].Children, err = stringSlice(parts[3]); err != nil {
			return nil, fmt.Errorf("ending task %s: %w", ids[i], err)
		}
		if out[i].Task, out[i].Creds, err = decodeTask(ids[i], hash, recs); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// EndMany implements broker.Ledger (its ManyEnder part): End, task by
// task, under the ledger's lock each.
func (l *MemoryLedger) EndMany(ctx context.Context, ids []string, state broker.State, reason string, at time.Time) ([]broker.EndResult, error) {
	if err := validateEndMany(ids, state, at); err != nil {
		return nil, err
	}
	out := make([]broker.EndResult, len(ids))
	for i, id := range ids {
		t, creds, err := l.End(ctx, id, state, reason, at)
		switch {
		case err == nil:
			out[i].Outcome = broker.EndedNow
		case errors.Is(err, broker.ErrNotActive):
			out[i].Outcome = broker.EndedNotActive
		default:
			out[i].Outcome = broker.EndedNotFound
			continue
		}
		out[i].Task, out[i].Creds = t, creds
		kids, _ := l.Children(ctx, id) // the memory ledger's Children never fails
		out[i].Children = kids
	}
	return out, nil
}

func validateEndMany(ids []string, state broker.State, at time.Time) error {
	if len(ids) > broker.MaxEndMany {
		return fmt.Errorf("ending tasks: %d ids, at most %d at once", len(ids), broker.MaxEndMany)
	}
	for _, id := range ids {
		if id == "" {
			return errors.New("ending tasks: an id is empty")
		}
	}
	if err := validateEnd(state, at); err != nil {
		return fmt.Errorf("ending tasks: %w", err)
	}
	return nil
}
