package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/replwait"
)

// ErrDuplicate: Record was given a task or credential id that the ledger
// already holds. Nothing was written.
var ErrDuplicate = errors.New("already recorded")

// NotReplicatedReason ends a task whose record did not reach a replica in
// time under redis.durability replica.
const NotReplicatedReason = "refused: the ledger write did not reach a replica"

// DefaultRetention is how long a finished task's records stay readable after
// its deadline when RedisOptions.Retention is zero.
const DefaultRetention = time.Hour

// NewClient connects to the Redis at url (redis:// or rediss://) with
// timeouts short enough that a dead Redis answers within about a second
// instead of hanging a request: 500 ms to dial, read and write, 1 s to wait
// for a pooled connection, one retry, one dial attempt per try, pipelines on
// the main pool, and context deadlines honoured. Timeouts and retries given as URL query parameters
// (dial_timeout=2s, ...) take precedence.
func NewClient(url string) (*redis.Client, error) {
	opt, err := clientOptions(url)
	if err != nil {
		return nil, err
	}
	return redis.NewClient(opt), nil
}

// clientOptions are the options of NewClient.
func clientOptions(url string) (*redis.Options, error) {
	if !strings.HasPrefix(url, "redis://") && !strings.HasPrefix(url, "rediss://") {
		return nil, errors.New("parsing redis url: scheme must be redis:// or rediss://")
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		// The url may carry a password; the parser's error does not echo
		// it, and neither do we.
		return nil, fmt.Errorf("parsing redis url: %w", err)
	}
	setDefault := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	setDefault(&opt.DialTimeout, 500*time.Millisecond)
	setDefault(&opt.ReadTimeout, 500*time.Millisecond)
	setDefault(&opt.WriteTimeout, 500*time.Millisecond)
	setDefault(&opt.PoolTimeout, time.Second)
	if opt.MaxRetries == 0 {
		opt.MaxRetries = 1
	}
	if opt.DialerRetries == 0 {
		// go-redis otherwise dials 5 times, 100 ms apart, per try: with a
		// refused port that alone takes half a second per try.
		opt.DialerRetries = 1
	}
	if opt.PipelinePoolSize == 0 {
		// Pipelines here are two commands; the dedicated pipeline pool buys
		// nothing, and when Redis hangs a pipeline that fails there is tried
		// again on the main pool, doubling the time to fail.
		opt.PipelinePoolSize = -1
	}
	opt.ContextTimeoutEnabled = true
	return opt, nil
}

// RedisOptions configures a RedisLedger.
type RedisOptions struct {
	// Prefix starts every key; default "valet".
	Prefix string
	// Retention is how long a finished task's records stay readable after
	// its deadline; default DefaultRetention.
	Retention time.Duration
	// Logger receives the ledger-generation messages (a detected data
	// loss is logged at Error); default slog.Default().
	Logger *slog.Logger
	// Now is the broker's clock, which stamps credentials; a new
	// generation's revoked-before instant is read from it. Default
	// time.Now.
	Now func() time.Time
	// ReapLease is how long a reaper has to audit a batch it ended before
	// another replica's reaper does (reap.go); default DefaultReapLease.
	ReapLease time.Duration
	// Durable, when set, answers Record only once its write reached the
	// replicas it asks for (redis.durability: replica). A write the
	// replicas did not acknowledge in time fails with ErrUnavailable, and
	// the task it recorded is ended at once, so nothing is handed out that
	// a promoted replica would not know.
	Durable *replwait.Waiter
	// Trail, when set, is the audit stream chain RecordGranted writes a
	// grant's audit line to, in the Record script's own round trip
	// (`valet serve` sets it to the chain of its audit.RedisWriter).
	Trail Trail
}

// Trail is an audit chain that hands its next line to a script of the
// ledger instead of writing it itself: audit.Log over an audit.RedisWriter.
// It is safe for concurrent use.
type Trail interface {
	// RecordVia chains e under the chain's lock and calls write with the
	// keys and arguments of the line's stream append (AppendLua's
	// functions); the chain moves on only when write returns nil, and
	// re-reads its head from Redis after an error (the line may or may
	// not have landed).
	RecordVia(ctx context.Context, e broker.Event, write func(keys []string, args []any) error) error
	// AppendLua is Lua defining audit_check(K, A) and audit_append(K, A)
	// (audit.StreamAppendLua), which the Record script runs.
	AppendLua() string
}

// RedisLedger is the broker.Ledger kept in Redis, shared by every broker
// replica. It is safe for concurrent use. Errors that mean Redis could not
// be reached or could not serve (refused, timed out, loading, read-only)
// wrap broker.ErrUnavailable.
type RedisLedger struct {
	c         redis.UniversalClient
	keys      keys
	retention time.Duration
	gen       *generation
	reapLease time.Duration
	durable   *replwait.Waiter
	trail     Trail
	// auditedScript is the Record script with the trail's append.
	auditedScript *redis.Script
	// scriptsLoaded: a Ping has loaded the hot scripts (Ping).
	scriptsLoaded atomic.Bool
}

// hotScripts are the sources of the scripts Ping loads.
func (l *RedisLedger) hotScripts() []string {
	out := []string{luaCommon + recordLua, endLua}
	if l.trail != nil {
		out = append(out, luaCommon+l.trail.AppendLua()+recordLua)
	}
	return out
}

var (
	_ broker.Ledger        = (*RedisLedger)(nil)
	_ broker.LossReporter  = (*RedisLedger)(nil)
	_ broker.GrantRecorder = (*RedisLedger)(nil)
)

// NewRedisLedger returns a ledger that keeps its records in c.
func NewRedisLedger(c redis.UniversalClient, opts RedisOptions) (*RedisLedger, error) {
	if c == nil {
		return nil, errors.New("redis ledger: client cannot be nil")
	}
	if opts.Retention < 0 {
		return nil, fmt.Errorf("redis ledger: retention %v is negative", opts.Retention)
	}
	if opts.Prefix == "" {
		opts.Prefix = "valet"
	}
	if err := checkClientPrefix(c, opts.Prefix); err != nil {
		return nil, fmt.Errorf("redis ledger: %w", err)
	}
	if opts.Retention == 0 {
		opts.Retention = DefaultRetention
	}
	if opts.ReapLease <= 0 {
		opts.ReapLease = DefaultReapLease
	}
	k := keys{prefix: opts.Prefix}
	l := &RedisLedger{c: c, keys: k, retention: opts.Retention, gen: newGeneration(c, k, opts.Logger, opts.Now),
		reapLease: opts.ReapLease, durable: opts.Durable, trail: opts.Trail}
	if opts.Trail != nil {
		l.auditedScript = redis.NewScript(luaCommon + opts.Trail.AppendLua() + recordLua)
	}
	return l, nil
}

// keys names every key the ledger writes; see the package documentation.
type keys struct{ prefix string }

// keyEscaper keeps ":" out of the parts of a key, so that one id can never
// spell another record's key ("x:creds" as a task id, say).
var keyEscaper = strings.NewReplacer("%", "%25", ":", "%3A")

func part(s string) string { return keyEscaper.Replace(s) }

func (k keys) task(id string) string      { return k.prefix + ":task:" + part(id) }
func (k keys) taskCreds(id string) string { return k.task(id) + ":creds" }
func (k keys) cred(id string) string      { return k.prefix + ":cred:" + part(id) }
func (k keys) denyPrefix() string         { return k.prefix + ":deny:" }
func (k keys) deny(id string) string      { return k.denyPrefix() + part(id) }
func (k keys) deadlines() string          { return k.prefix + ":deadlines" }
func (k keys) agentIndex(issuer, agent string) string {
	return k.prefix + ":idx:agent:" + part(issuer) + ":" + part(agent)
}
func (k keys) templateIndex(name string) string { return k.prefix + ":idx:template:" + part(name) }
func (k keys) issuerIndex(issuer string) string { return k.prefix + ":idx:issuer:" + part(issuer) }

// luaCommon is shared by the scripts: the Redis clock in unix ms, the key
// escaping of keys.part, and an expiry that only ever moves later. (EXPIRE
// GT treats a key without a TTL as never expiring, so when it sets nothing
// a key without a TTL gets a plain EXPIRE: one command when the expiry
// moves later, as it usually does, three at most.)
const luaCommon = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function part(s)
  return (string.gsub(s, '[%%:]', {['%'] = '%25', [':'] = '%3A'}))
end
local function expire_at_least(key, at)
  if redis.call('PEXPIREAT', key, at, 'GT') == 0 and redis.call('PTTL', key) == -1 then
    redis.call('PEXPIREAT', key, at)
  end
end
`

// trimEvery is how many records, on average, share one trim of the
// indexes: a Lua script costs per command, and trimming four sorted sets on
// every record was a third of the script.
const trimEvery = "16"

// indexExpiryStep rounds an index key's expiry up (ms): the expiry of a
// sorted set many tasks share then moves once a minute, not with every
// record, and a record pays one PEXPIRETIME to learn it need not move it.
// An index outlives its newest task by at most a minute more.
const indexExpiryStep = "60000"

// recordLua writes a new task and its credentials, or nothing, and (in
// recordAuditedScript) the grant's audit line in the same atomic step. It
// refuses a write to a generation other than the one the caller knows
// (generation.go), so a ledger that lost its data never takes a record as
// if nothing had happened. Every check comes before the first write.
//
// KEYS: task, task creds, deadlines, generation, then ni index keys
// (template, and the agent and issuer index of every link of the task: see
// Task.Links), then nc cred keys, then nt keys of the audit stream append
// (audit.StreamAppendLua).
// ARGV: task id, deadline ms, records expire-at ms, retention ms, nf, ni,
// nc, parent task key and children key ("" if none), the generation id the
// caller knows, nt, then nf task hash arguments (field, value, ...), then
// one JSON record per credential, then the audit append's arguments.
//
// Commands per record of one credential, besides the EVALSHA: HGET
// (generation), one EXISTS for every key it creates, HSET and PEXPIREAT
// (task), SET, RPUSH and PEXPIREAT (credential), ZADD and PEXPIRETIME per
// index (4), and, on one record in trimEvery, TIME and ZREMRANGEBYSCORE per
// index.
const recordLua = `
local nf, ni, nc, nt = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[11])
local first_cred = 5 + ni
local last_cred = first_cred + nc - 1
local first_field = 12
local first_rec = first_field + nf
local gen = redis.call('HGET', KEYS[4], 'id')
if gen ~= ARGV[10] then
  return redis.error_reply('VALET_GENERATION ' .. (gen or ''))
end
if redis.call('EXISTS', KEYS[1], KEYS[2], unpack(KEYS, first_cred, last_cred)) > 0 then
  if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
    return redis.error_reply('VALET_DUPLICATE task ' .. ARGV[1])
  end
  for i = first_cred, last_cred do
    if redis.call('EXISTS', KEYS[i]) > 0 then
      return redis.error_reply('VALET_DUPLICATE credential key ' .. KEYS[i])
    end
  end
end
local parent_key = ARGV[8]
if parent_key ~= '' then
  if redis.call('HGET', parent_key, 'state') ~= 'active' then
    return redis.error_reply('VALET_PARENT_NOT_ACTIVE ' .. parent_key)
  end
end
local AK, AA
if nt > 0 then
  AK = {unpack(KEYS, last_cred + 1, last_cred + nt)}
  AA = {unpack(ARGV, first_rec + nc)}
  local r = audit_check(AK, AA)
  if r then
    if r == 'duplicate' then
      return redis.error_reply('VALETAUDIT duplicate line')
    end
    return r
  end
end
local id, deadline, expire_at = ARGV[1], ARGV[2], ARGV[3]
redis.call('HSET', KEYS[1], unpack(ARGV, first_field, first_rec - 1))
redis.call('PEXPIREAT', KEYS[1], expire_at)
for i = first_cred, last_cred do
  local rec = ARGV[first_rec + i - first_cred]
  redis.call('SET', KEYS[i], rec, 'PXAT', expire_at)
  redis.call('RPUSH', KEYS[2], rec)
end
if nc > 0 then
  redis.call('PEXPIREAT', KEYS[2], expire_at)
end
-- The indexes are trimmed of tasks past their retention on one record in
-- trimEvery (picked by the last bytes of the random task id; deadlines are
-- often whole seconds), not on every one: readers skip entries whose
-- records have expired, and each index key expires with its newest task.
local trim = (string.byte(id, -1) * 7 + string.byte(id, -2)) % ` + trimEvery + ` == 0
local trim_below
if trim then
  trim_below = '(' .. string.format('%d', now_ms() - tonumber(ARGV[4]))
end
local step = ` + indexExpiryStep + `
local index_at = math.ceil(tonumber(expire_at) / step) * step
for i = 3, 4 + ni do
  if i ~= 4 then -- KEYS[4] is the generation, not an index
    redis.call('ZADD', KEYS[i], deadline, id)
    if trim then
      redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', trim_below)
    end
    local cur = redis.call('PEXPIRETIME', KEYS[i])
    if cur < index_at then -- -1: no expiry yet (a new index)
      redis.call('PEXPIREAT', KEYS[i], string.format('%d', index_at))
    end
  end
end
if parent_key ~= '' then
  local children_key = ARGV[9]
  redis.call('SADD', children_key, id)
  expire_at_least(children_key, expire_at)
end
if nt > 0 then
  audit_append(AK, AA)
end
return 'OK'
`

// recordScript is recordLua without an audit append (nt 0).
var recordScript = redis.NewScript(luaCommon + recordLua)

// endScript moves an active task to a final state and denies its
// credentials. It answers {"ended"|"not_active", task hash, cred records} or
// {"not_found"}. A missing task is also dropped from the deadlines, so a
// task whose records expired before anyone ended it cannot stay due forever.
//
// KEYS: task, task creds, deadlines, revocation feed stream.
// ARGV: task id, state, reason, ended-at ms, deny key prefix, feed max
// length, feed trim-below ms, feed life ms. Each denied JWT is also appended to the feed
// (governance.go), in the same script so no revocation can miss it.
var endScript = redis.NewScript(endLua)

const endLua = luaCommon + `
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  return {'not_found'}
end
local creds = redis.call('LRANGE', KEYS[2], 0, -1)
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then
  return {'not_active', redis.call('HGETALL', KEYS[1]), creds}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'end_reason', ARGV[3], 'ended_at', ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[1])
local now = now_ms()
for _, rec in ipairs(creds) do
  local c = cjson.decode(rec)
  local ttl = math.max(tonumber(c.expires_at) - now, 1000)
  redis.call('SET', ARGV[5] .. part(c.id), ARGV[1], 'PX', string.format('%d', ttl))
  if c.kind == 'jwt' and KEYS[4] then
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'type', 'revoked', 'jti', c.id, 'task_id', ARGV[1],
      'exp', string.format('%d', math.floor(tonumber(c.expires_at) / 1000)))
  end
end
if KEYS[4] then
  redis.call('XTRIM', KEYS[4], 'MINID', '~', ARGV[7])
  if redis.call('EXISTS', KEYS[4]) == 1 then
    expire_at_least(KEYS[4], now + ARGV[8])
  end
end
return {'ended', redis.call('HGETALL', KEYS[1]), creds}
`

// Record implements broker.Ledger: one script, one round trip. A task or
// credential id the ledger already holds gives ErrDuplicate.
func (l *RedisLedger) Record(ctx context.Context, t broker.Task, creds []broker.Credential) error {
	return l.record(ctx, t, creds, nil, nil)
}

// RecordGranted implements broker.GrantRecorder: with RedisOptions.Trail
// set, the grant's audit line goes to the audit stream in the Record
// script itself, so a declaration costs one Redis round trip, and the line
// is there exactly when the records are; chain is then the Trail. Without
// a trail it is Record, and chain is nil.
func (l *RedisLedger) RecordGranted(ctx context.Context, t broker.Task, creds []broker.Credential, ev broker.Event) (chain any, err error) {
	if l.trail == nil {
		return nil, l.Record(ctx, t, creds)
	}
	if err := validateRecord(t, creds); err != nil {
		return nil, err
	}
	var recErr error
	err = l.trail.RecordVia(ctx, ev, func(keys []string, args []any) error {
		recErr = l.record(ctx, t, creds, keys, args)
		return recErr
	})
	if recErr != nil {
		return nil, recErr
	}
	if err != nil {
		return nil, fmt.Errorf("recording task %s: writing its audit line: %w: %w", t.ID, broker.ErrUnavailable, err)
	}
	return l.trail, nil
}

// record runs the Record script, with the audit stream append of
// auditKeys and auditArgs (audit.StreamAppendLua) when they are given.
func (l *RedisLedger) record(ctx context.Context, t broker.Task, creds []broker.Credential, auditKeys []string, auditArgs []any) error {
	if err := validateRecord(t, creds); err != nil {
		return err
	}
	gen, err := l.gen.current(ctx)
	if err != nil {
		return fmt.Errorf("recording task %s: %w", t.ID, err)
	}
	expireAt := recordsExpireAt(t, creds, l.retention).UnixMilli()
	keys := make([]string, 0, 4+4+len(creds)+len(auditKeys))
	keys = append(keys, l.keys.task(t.ID), l.keys.taskCreds(t.ID), l.keys.deadlines(), l.keys.generation())
	indexes := l.indexesOf(t)
	keys = append(keys, indexes...)
	fields, err := taskFields(t)
	if err != nil {
		return fmt.Errorf("recording task %s: %w", t.ID, err)
	}
	parentKey, childrenKey := "", ""
	if t.Parent != "" {
		// The parent's records and children set (see redis_tree.go).
		parentKey, childrenKey = l.keys.task(t.Parent), l.keys.children(t.Parent)
	}
	args := make([]any, 0, 11+len(fields)+len(creds)+len(auditArgs))
	args = append(args, t.ID, t.Deadline.UnixMilli(), expireAt, l.retention.Milliseconds(), len(fields), len(indexes),
		len(creds), parentKey, childrenKey, gen, len(auditKeys))
	args = append(args, fields...)
	for _, c := range creds {
		keys = append(keys, l.keys.cred(c.ID))
		cr := toCredRecord(c)
		cr.Gen = gen // generation.go: the global epoch spares what this generation recorded
		rec, err := json.Marshal(cr)
		if err != nil {
			return fmt.Errorf("recording task %s: encoding credential %s: %w", t.ID, c.ID, err)
		}
		args = append(args, rec)
	}
	keys = append(keys, auditKeys...)
	args = append(args, auditArgs...)
	script := recordScript
	if len(auditKeys) > 0 {
		script = l.auditedScript
	}
	if l.durable != nil {
		err = l.durable.Run(ctx, l.c, script, keys, args...).Err()
		if errors.Is(err, replwait.ErrNotReplicated) {
			// The primary holds the task but a promoted replica might
			// not: end it now (its JWTs go on the deny list), so it is
			// never live on one side only; the caller revokes at source.
			ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_, _, eerr := l.End(ectx, t.ID, broker.StateRevoked, NotReplicatedReason, time.Now())
			cancel()
			if eerr != nil {
				err = fmt.Errorf("%w; ending it: %w", err, eerr)
			}
			return fmt.Errorf("recording task %s: %w: %w", t.ID, broker.ErrUnavailable, err)
		}
	} else {
		err = script.Run(ctx, l.c, keys, args...).Err()
	}
	if redis.HasErrorPrefix(err, "VALET_GENERATION") {
		// The data this process knew is gone: start (or adopt) the new
		// generation, whose epoch revokes everything issued before it,
		// and refuse this record: its credentials were minted before.
		seen := strings.TrimSpace(strings.TrimPrefix(err.Error(), "VALET_GENERATION"))
		if oerr := l.gen.observe(context.WithoutCancel(ctx), seen, seen != ""); oerr != nil {
			return fmt.Errorf("recording task %s: %w", t.ID, oerr)
		}
		return fmt.Errorf("recording task %s: %w: the ledger lost its data (a new generation began; retry)", t.ID, broker.ErrUnavailable)
	}
	if redis.HasErrorPrefix(err, "VALET_DUPLICATE") {
		return fmt.Errorf("recording task %s: %w (%v)", t.ID, ErrDuplicate, err)
	}
	if redis.HasErrorPrefix(err, "VALET_PARENT_NOT_ACTIVE") {
		return fmt.Errorf("recording task %s: parent %s: %w", t.ID, t.Parent, broker.ErrNotActive)
	}
	if redis.HasErrorPrefix(err, "VALETAUDIT") {
		return fmt.Errorf("recording task %s: the audit chain refused its line: %w: %w", t.ID, broker.ErrUnavailable, err)
	}
	return wrapErr("recording task "+t.ID, err)
}

// indexesOf are the index keys a task is listed under, for bulk
// revocation (Candidates): its template, and the agent and issuer index of
// every principal of its chain and of the user it acts for, so a job
// selects the same tasks its epochs cover.
func (l *RedisLedger) indexesOf(t broker.Task) []string {
	out := []string{l.keys.templateIndex(t.Template)}
	seen := map[string]bool{out[0]: true}
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	for _, ln := range t.Links() {
		add(l.keys.agentIndex(ln.Issuer, ln.Agent))
		add(l.keys.issuerIndex(ln.Issuer))
	}
	return out
}

// Task implements broker.Ledger in one pipelined round trip.
func (l *RedisLedger) Task(ctx context.Context, id string) (broker.Task, []broker.Credential, error) {
	var hash *redis.MapStringStringCmd
	var recs *redis.StringSliceCmd
	var marker *redis.SliceCmd
	_, err := l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		hash = p.HGetAll(ctx, l.keys.task(id))
		recs = p.LRange(ctx, l.keys.taskCreds(id), 0, -1)
		// Most paths read the task before its credential (the gate): the
		// generation is checked here too, so a loss is noticed (and its
		// global epoch announced) on the first read after it.
		marker = l.gen.readMarker(ctx, p)
		return nil
	})
	if err != nil {
		return broker.Task{}, nil, wrapErr("reading task "+id, err)
	}
	gid, _, present := markerSeen(marker)
	if err := l.gen.observe(ctx, gid, present); err != nil {
		return broker.Task{}, nil, err
	}
	if len(hash.Val()) == 0 {
		return broker.Task{}, nil, fmt.Errorf("reading task %s: %w", id, broker.ErrNotFound)
	}
	return decodeTask(id, hash.Val(), recs.Val())
}

// End implements broker.Ledger in one script.
func (l *RedisLedger) End(ctx context.Context, id string, state broker.State, reason string, at time.Time) (broker.Task, []broker.Credential, error) {
	if err := validateEnd(state, at); err != nil {
		return broker.Task{}, nil, fmt.Errorf("ending task %s: %w", id, err)
	}
	keys := []string{l.keys.task(id), l.keys.taskCreds(id), l.keys.deadlines(), l.keys.feed()}
	reply, err := endScript.Eval(ctx, l.c, keys, id, string(state), reason, at.UnixMilli(), l.keys.denyPrefix(),
		FeedMaxLen, time.Now().Add(-broker.EpochTTL).UnixMilli(), broker.EpochTTL.Milliseconds()).Slice()
	if err != nil {
		return broker.Task{}, nil, wrapErr("ending task "+id, err)
	}
	var status string
	if len(reply) > 0 {
		status, _ = reply[0].(string)
	}
	if status == "not_found" {
		return broker.Task{}, nil, fmt.Errorf("ending task %s: %w", id, broker.ErrNotFound)
	}
	if len(reply) != 3 {
		return broker.Task{}, nil, fmt.Errorf("ending task %s: unexpected script reply %v", id, reply)
	}
	hash, err := stringMap(reply[1])
	if err != nil {
		return broker.Task{}, nil, fmt.Errorf("ending task %s: %w", id, err)
	}
	recs, err := stringSlice(reply[2])
	if err != nil {
		return broker.Task{}, nil, fmt.Errorf("ending task %s: %w", id, err)
	}
	task, creds, err := decodeTask(id, hash, recs)
	if err != nil {
		return broker.Task{}, nil, err
	}
	if status != "ended" {
		return task, creds, fmt.Errorf("ending task %s: it is %s: %w", id, task.State, broker.ErrNotActive)
	}
	return task, creds, nil
}

// Credential implements broker.Ledger in one pipelined round trip.
func (l *RedisLedger) Credential(ctx context.Context, id string) (broker.Credential, bool, error) {
	var rec *redis.StringCmd
	var denied *redis.IntCmd
	var marker *redis.SliceCmd
	_, err := l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		rec = p.Get(ctx, l.keys.cred(id))
		denied = p.Exists(ctx, l.keys.deny(id))
		marker = l.gen.readMarker(ctx, p)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return broker.Credential{}, false, wrapErr("reading credential "+id, err)
	}
	gid, _, present := markerSeen(marker)
	if err := l.gen.observe(ctx, gid, present); err != nil {
		return broker.Credential{}, false, err
	}
	if err := rec.Err(); err != nil {
		return broker.Credential{}, false, wrapErr("reading credential "+id, err)
	}
	c, err := decodeCred([]byte(rec.Val()))
	if err != nil {
		return broker.Credential{}, false, fmt.Errorf("reading credential %s: %w", id, err)
	}
	return c, denied.Val() > 0, nil
}

// Due implements broker.Ledger. An id whose records expired before any End
// can still show up here until the next Record trims it; End answers
// ErrNotFound for it and drops it.
func (l *RedisLedger) Due(ctx context.Context, now time.Time, limit int) ([]string, error) {
	if limit <= 0 {
		return nil, nil
	}
	// The generation marker rides along (generation.go): every replica's
	// reaper reads it every pass, so a loss is noticed within one pass.
	var due *redis.StringSliceCmd
	var marker *redis.SliceCmd
	_, err := l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		due = p.ZRangeByScore(ctx, l.keys.deadlines(), &redis.ZRangeBy{
			Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10), Count: int64(limit),
		})
		marker = l.gen.readMarker(ctx, p)
		return nil
	})
	if err != nil {
		return nil, wrapErr("listing due tasks", err)
	}
	id, _, ok := markerSeen(marker)
	if err := l.gen.observe(ctx, id, ok); err != nil {
		return nil, err
	}
	return due.Val(), nil
}

// LastLoss reports the last time this process saw Redis lose the ledger's
// data (generation.go); false if it never did.
func (l *RedisLedger) LastLoss() (LossReport, bool) { return l.gen.lastLoss() }

// LossWarning implements broker.LossReporter.
func (l *RedisLedger) LossWarning() string {
	r, ok := l.gen.lastLoss()
	if !ok {
		return ""
	}
	return fmt.Sprintf("Redis lost the ledger's data (noticed %s); every credential issued at or before %s is revoked; generation %s replaced %s",
		r.DetectedAt.UTC().Format(time.RFC3339), r.Before.UTC().Format(time.RFC3339Nano), r.Current, r.Previous)
}

// Ping implements broker.Ledger. It reads the generation marker in the
// same round trip, so /readyz notices a loss too. Until one Ping has
// succeeded it also loads the scripts of the hot paths (Record, End), so
// that their first EVALSHA finds them: one round trip from the first call.
// (A Redis that restarts empty, or a SCRIPT FLUSH, costs each script one
// more trip once: Script.Run falls back to EVAL on NOSCRIPT.)
func (l *RedisLedger) Ping(ctx context.Context) error {
	var marker *redis.SliceCmd
	load := !l.scriptsLoaded.Load()
	_, err := l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Ping(ctx)
		marker = l.gen.readMarker(ctx, p)
		if load {
			for _, src := range l.hotScripts() {
				p.ScriptLoad(ctx, src)
			}
		}
		return nil
	})
	if err != nil {
		return wrapErr("pinging redis", err)
	}
	if load {
		l.scriptsLoaded.Store(true)
	}
	id, _, ok := markerSeen(marker)
	return l.gen.observe(ctx, id, ok)
}

// wrapErr classifies a go-redis error: redis.Nil is ErrNotFound; anything
// that is not an answer from Redis (refused, reset, timed out, pool
// exhausted, client closed, context done), and answers that mean Redis
// cannot serve now, wrap ErrUnavailable.
func wrapErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, redis.Nil):
		return fmt.Errorf("%s: %w", op, broker.ErrNotFound)
	case unavailable(err):
		return fmt.Errorf("%s: %w: %w", op, broker.ErrUnavailable, err)
	default:
		return fmt.Errorf("%s: %w", op, err)
	}
}

func unavailable(err error) bool {
	var answer redis.Error
	if !errors.As(err, &answer) {
		return true
	}
	return redis.IsLoadingError(err) || redis.IsReadOnlyError(err) || redis.IsClusterDownError(err) ||
		redis.HasErrorPrefix(err, "MASTERDOWN") || redis.HasErrorPrefix(err, "TRYAGAIN") ||
		redis.HasErrorPrefix(err, "BUSY")
}

// credRecord is a credential as stored: times in unix ms, so the End script
// can read expires_at.
type credRecord struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	TaskID    string `json:"task_id"`
	Parent    string `json:"parent,omitempty"`
	IssuedAt  int64  `json:"issued_at,omitempty"`
	ExpiresAt int64  `json:"expires_at"`
	// Gen is the ledger generation the record was written in.
	Gen string `json:"gen,omitempty"`
}

func toCredRecord(c broker.Credential) credRecord {
	return credRecord{
		ID: c.ID, Kind: string(c.Kind), TaskID: c.TaskID, Parent: c.Parent,
		IssuedAt: toMs(c.IssuedAt), ExpiresAt: toMs(c.ExpiresAt),
	}
}

func decodeCred(b []byte) (broker.Credential, error) {
	var r credRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return broker.Credential{}, fmt.Errorf("decoding credential record: %w", err)
	}
	return broker.Credential{
		ID: r.ID, Kind: broker.CredentialKind(r.Kind), TaskID: r.TaskID, Parent: r.Parent,
		IssuedAt: fromMs(r.IssuedAt), ExpiresAt: fromMs(r.ExpiresAt),
	}, nil
}

// taskFields lays a new task out as HSET arguments.
func taskFields(t broker.Task) ([]any, error) {
	tools, err := json.Marshal(t.Tools)
	if err != nil {
		return nil, fmt.Errorf("encoding tools: %w", err)
	}
	f := []any{
		"id", t.ID, "state", string(t.State), "agent", t.Agent, "issuer", t.Issuer,
		"template", t.Template, "intent", t.Intent, "tools", string(tools),
		"deadline", t.Deadline.UnixMilli(),
	}
	f = append(f, treeFields(t)...)
	for _, list := range []struct {
		field  string
		values []string
	}{{"audiences", t.Audiences}, {"scopes", t.Scopes}} {
		if len(list.values) > 0 {
			b, err := json.Marshal(list.values)
			if err != nil {
				return nil, fmt.Errorf("encoding %s: %w", list.field, err)
			}
			f = append(f, list.field, string(b))
		}
	}
	if !t.CreatedAt.IsZero() {
		f = append(f, "created_at", t.CreatedAt.UnixMilli())
	}
	return f, nil
}

func decodeTask(id string, h map[string]string, recs []string) (broker.Task, []broker.Credential, error) {
	t := broker.Task{
		ID: h["id"], State: broker.State(h["state"]), Agent: h["agent"], Issuer: h["issuer"],
		Template: h["template"], Intent: h["intent"], EndReason: h["end_reason"],
	}
	var err error
	ms := func(field string) time.Time {
		v, ok := h[field]
		if !ok || err != nil {
			return time.Time{}
		}
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil {
			err = fmt.Errorf("field %s: %w", field, perr)
		}
		return fromMs(n)
	}
	t.CreatedAt, t.Deadline, t.EndedAt = ms("created_at"), ms("deadline"), ms("ended_at")
	if err == nil {
		if terr := json.Unmarshal([]byte(h["tools"]), &t.Tools); terr != nil {
			err = fmt.Errorf("field tools: %w", terr)
		}
	}
	if err == nil {
		err = decodeTreeFields(&t, h)
	}
	for field, dst := range map[string]*[]string{"audiences": &t.Audiences, "scopes": &t.Scopes} {
		if v, ok := h[field]; ok && err == nil {
			if jerr := json.Unmarshal([]byte(v), dst); jerr != nil {
				err = fmt.Errorf("field %s: %w", field, jerr)
			}
		}
	}
	if err == nil && (t.ID != id || t.State == "") {
		err = errors.New("record is incomplete")
	}
	if err != nil {
		return broker.Task{}, nil, fmt.Errorf("decoding task %s: %w", id, err)
	}
	var creds []broker.Credential
	for _, r := range recs {
		c, err := decodeCred([]byte(r))
		if err != nil {
			return broker.Task{}, nil, fmt.Errorf("decoding task %s: %w", id, err)
		}
		creds = append(creds, c)
	}
	return t, creds, nil
}

// stringMap reads a flat HGETALL array out of a script reply.
func stringMap(v any) (map[string]string, error) {
	flat, err := stringSlice(v)
	if err != nil || len(flat)%2 != 0 {
		return nil, fmt.Errorf("unexpected hash in script reply: %v", v)
	}
	m := make(map[string]string, len(flat)/2)
	for i := 0; i < len(flat); i += 2 {
		m[flat[i]] = flat[i+1]
	}
	return m, nil
}

// stringSlice reads an array of strings out of a script reply.
func stringSlice(v any) ([]string, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("unexpected array in script reply: %T", v)
	}
	out := make([]string, len(arr))
	for i, e := range arr {
		if out[i], ok = e.(string); !ok {
			return nil, fmt.Errorf("unexpected element in script reply: %T", e)
		}
	}
	return out, nil
}

// The rest is shared by both ledgers.

// validateRecord checks what Record is given before anything is written.
func validateRecord(t broker.Task, creds []broker.Credential) error {
	switch {
	case t.ID == "":
		return errors.New("recording task: id is empty")
	case t.State != broker.StateActive:
		return fmt.Errorf("recording task %s: state is %q, want %q", t.ID, t.State, broker.StateActive)
	case t.Deadline.IsZero():
		return fmt.Errorf("recording task %s: deadline is not set", t.ID)
	}
	seen := make(map[string]bool, len(creds))
	for i, c := range creds {
		switch {
		case c.ID == "":
			return fmt.Errorf("recording task %s: credential %d: id is empty", t.ID, i)
		case c.TaskID != t.ID:
			return fmt.Errorf("recording task %s: credential %s belongs to task %q", t.ID, c.ID, c.TaskID)
		case c.ExpiresAt.IsZero():
			return fmt.Errorf("recording task %s: credential %s has no expiry", t.ID, c.ID)
		case seen[c.ID]:
			return fmt.Errorf("recording task %s: credential %s twice: %w", t.ID, c.ID, ErrDuplicate)
		}
		seen[c.ID] = true
	}
	return nil
}

func validateEnd(state broker.State, at time.Time) error {
	if !state.Final() {
		return fmt.Errorf("state %q is not a final state", state)
	}
	if at.IsZero() {
		return errors.New("end time is not set")
	}
	return nil
}

// recordsExpireAt is when a task's records may go: its deadline, or the
// latest expiry of its credentials if an issuer overshot it, plus retention.
func recordsExpireAt(t broker.Task, creds []broker.Credential, retention time.Duration) time.Time {
	last := t.Deadline
	for _, c := range creds {
		if c.ExpiresAt.After(last) {
			last = c.ExpiresAt
		}
	}
	return last.Add(retention)
}

// toMs and fromMs store times as unix milliseconds, the zero time as 0.
func toMs(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMs(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms).UTC()
}

// truncMs is what a time reads back as after a trip through either ledger.
func truncMs(t time.Time) time.Time { return fromMs(toMs(t)) }

// validateRenew checks what Renew is given before anything is written.
func validateRenew(id string, from, to time.Time, creds []broker.Credential) error {
	switch {
	case id == "":
		return errors.New("renewing task: id is empty")
	case from.IsZero() || to.IsZero():
		return fmt.Errorf("renewing task %s: both deadlines must be set", id)
	case toMs(to) <= toMs(from):
		return fmt.Errorf("renewing task %s: new deadline %s is not after %s", id, to, from)
	}
	return validateRecord(broker.Task{ID: id, State: broker.StateActive, Deadline: to}, creds)
}

// renewScript moves an active task's deadline and adds credentials, or
// writes nothing. Like recordScript it refuses a generation other than the
// caller's. It answers {"renewed"|"not_active"|"conflict", task hash} or
// {"not_found"}.
//
// KEYS: task, task creds, deadlines, generation, then ni index keys, then
// ne keys of the task's credentials as read before, then one cred key per
// new credential.
// ARGV: task id, expected deadline ms, new deadline ms, records expire-at
// ms, ni, generation id, ne, one JSON record per new credential.
var renewScript = redis.NewScript(luaCommon + `
local ni, ne = tonumber(ARGV[5]), tonumber(ARGV[7])
local first_old = 5 + ni
local first_cred = first_old + ne
local gen = redis.call('HGET', KEYS[4], 'id')
if gen ~= ARGV[6] then
  return redis.error_reply('VALET_GENERATION ' .. (gen or ''))
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'not_found'}
end
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then
  return {'not_active', redis.call('HGETALL', KEYS[1])}
end
if redis.call('HGET', KEYS[1], 'deadline') ~= ARGV[2] then
  return {'conflict', redis.call('HGETALL', KEYS[1])}
end
for i = first_cred, #KEYS do
  if redis.call('EXISTS', KEYS[i]) > 0 then
    return redis.error_reply('VALET_DUPLICATE credential key ' .. KEYS[i])
  end
end
local id, deadline, expire_at = ARGV[1], ARGV[3], tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'deadline', deadline)
expire_at_least(KEYS[1], expire_at)
for i = first_cred, #KEYS do
  local rec = ARGV[7 + i - first_cred + 1]
  redis.call('SET', KEYS[i], rec, 'PXAT', expire_at)
  redis.call('RPUSH', KEYS[2], rec)
end
expire_at_least(KEYS[2], expire_at)
-- The task's earlier credential records live as long as the task's.
for i = first_old, first_cred - 1 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    expire_at_least(KEYS[i], expire_at)
  end
end
for i = 3, 4 + ni do
  if i ~= 4 then -- KEYS[4] is the generation, not an index
    redis.call('ZADD', KEYS[i], deadline, id)
    expire_at_least(KEYS[i], expire_at)
  end
end
return {'renewed', redis.call('HGETALL', KEYS[1])}
`)

// Renew implements broker.Ledger in one script.
func (l *RedisLedger) Renew(ctx context.Context, id string, from, to time.Time, creds []broker.Credential) (broker.Task, error) {
	if err := validateRenew(id, from, to, creds); err != nil {
		return broker.Task{}, err
	}
	gen, err := l.gen.current(ctx)
	if err != nil {
		return broker.Task{}, fmt.Errorf("renewing task %s: %w", id, err)
	}
	// The task's indexes are those of its record; read it first (the
	// script checks it did not change meanwhile: same deadline, active).
	cur, old, err := l.Task(ctx, id)
	if err != nil {
		return broker.Task{}, fmt.Errorf("renewing task %s: %w", id, err)
	}
	expireAt := recordsExpireAt(broker.Task{Deadline: to}, creds, l.retention).UnixMilli()
	keys := []string{l.keys.task(id), l.keys.taskCreds(id), l.keys.deadlines(), l.keys.generation()}
	indexes := l.indexesOf(cur)
	keys = append(keys, indexes...)
	for _, c := range old {
		keys = append(keys, l.keys.cred(c.ID))
	}
	args := []any{id, toMs(from), toMs(to), expireAt, len(indexes), gen, len(old)}
	for _, c := range creds {
		keys = append(keys, l.keys.cred(c.ID))
		cr := toCredRecord(c)
		cr.Gen = gen
		rec, err := json.Marshal(cr)
		if err != nil {
			return broker.Task{}, fmt.Errorf("renewing task %s: encoding credential %s: %w", id, c.ID, err)
		}
		args = append(args, rec)
	}
	reply, err := renewScript.Eval(ctx, l.c, keys, args...).Slice()
	if redis.HasErrorPrefix(err, "VALET_GENERATION") {
		seen := strings.TrimSpace(strings.TrimPrefix(err.Error(), "VALET_GENERATION"))
		if oerr := l.gen.observe(context.WithoutCancel(ctx), seen, seen != ""); oerr != nil {
			return broker.Task{}, fmt.Errorf("renewing task %s: %w", id, oerr)
		}
		return broker.Task{}, fmt.Errorf("renewing task %s: %w: the ledger lost its data (a new generation began; retry)", id, broker.ErrUnavailable)
	}
	if redis.HasErrorPrefix(err, "VALET_DUPLICATE") {
		return broker.Task{}, fmt.Errorf("renewing task %s: %w (%v)", id, ErrDuplicate, err)
	}
	if err != nil {
		return broker.Task{}, wrapErr("renewing task "+id, err)
	}
	status, _ := reply[0].(string)
	if status == "not_found" {
		return broker.Task{}, fmt.Errorf("renewing task %s: %w", id, broker.ErrNotFound)
	}
	if len(reply) != 2 {
		return broker.Task{}, fmt.Errorf("renewing task %s: unexpected script reply %v", id, reply)
	}
	hash, err := stringMap(reply[1])
	if err != nil {
		return broker.Task{}, fmt.Errorf("renewing task %s: %w", id, err)
	}
	task, _, err := decodeTask(id, hash, nil)
	if err != nil {
		return broker.Task{}, err
	}
	switch status {
	case "not_active":
		return task, fmt.Errorf("renewing task %s: it is %s: %w", id, task.State, broker.ErrNotActive)
	case "conflict":
		return task, fmt.Errorf("renewing task %s: its deadline is %s, not %s: %w", id, task.Deadline, truncMs(from), broker.ErrConflict)
	}
	return task, nil
}
