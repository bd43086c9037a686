package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
)

// Incident-response state kept beside the ledger, in the same Redis and
// under the same prefix (see doc.go for the key layout):
//
//	valet:epoch:agent:<issuer>:<agent>   string: revoked-before, unix ms (TTL: before + 24h)
//	valet:epoch:template:<name>          string: idem
//	valet:epoch:issuer:<issuer>          string: idem
//	valet:epochs                         hash: "<dimension> <key>" → unix ms, for the feed snapshot
//	valet:revocations                    stream: the revocation feed (type revoked|epoch|control)
//	valet:controls                       hash: control id → JSON
//	valet:controls:changed               pub/sub channel: a control changed
//	valet:job:<id>                       string: a bulk revocation job (JSON) (TTL: max(retention, 1h) after its last save)
//	valet:job:<id>:lease                 string: the broker running it (PX: the job lease)
//	valet:jobs:running                   set: ids of unfinished jobs (TTL: as valet:job:<id>, from the last save of a running job)
//	valet:generation                     hash: the ledger generation (generation.go; TTL: broker.EpochTTL, refreshed)
//
// valet:controls has no TTL on purpose: a control is a standing order that
// must not lapse by itself; it goes when an admin lifts it.

// FeedMaxLen caps the revocation stream (approximately); entries older than
// broker.EpochTTL are trimmed too, as nothing they name is still live.
const FeedMaxLen = 1_000_000

// jobMinRetention is the shortest a job record is kept after its last
// save, whatever redis.retention says: long enough for a responder to read
// how a bulk revocation went.
const jobMinRetention = time.Hour

func (k keys) epoch(e broker.Epoch) string {
	key := part(e.Key)
	if e.Dimension == broker.DimAgent {
		if is, sub, ok := strings.Cut(e.Key, "/"); ok {
			key = part(is) + ":" + part(sub)
		}
	}
	return k.prefix + ":epoch:" + string(e.Dimension) + ":" + key
}
func (k keys) epochs() string          { return k.prefix + ":epochs" }
func (k keys) feed() string            { return k.prefix + ":revocations" }
func (k keys) controls() string        { return k.prefix + ":controls" }
func (k keys) controlsChannel() string { return k.prefix + ":controls:changed" }
func (k keys) job(id string) string    { return k.prefix + ":job:" + part(id) }
func (k keys) jobLease(id string) string {
	return k.job(id) + ":lease"
}
func (k keys) jobsRunning() string { return k.prefix + ":jobs:running" }

// Feed returns the revocation feed of this ledger's Redis.
func (l *RedisLedger) Feed() *RedisFeed { return &RedisFeed{c: l.c, keys: l.keys} }

var _ broker.EpochStore = (*RedisLedger)(nil)
var _ incident.JobStore = (*RedisLedger)(nil)

// CredentialStatus implements broker.EpochStore: the credential record, its
// deny entry, the epochs and the generation marker, in one pipelined round
// trip. The latest Before includes the global epoch of the ledger's
// generation (generation.go), so a credential issued before Redis lost its
// data is denied on every path that asks here; a marker found missing
// starts the new generation first (one more round trip, once per loss).
func (l *RedisLedger) CredentialStatus(ctx context.Context, id string, epochs []broker.Epoch) (broker.Credential, bool, time.Time, error) {
	var rec *redis.StringCmd
	var denied *redis.IntCmd
	var eps, marker *redis.SliceCmd
	ekeys := make([]string, len(epochs))
	for i, e := range epochs {
		ekeys[i] = l.keys.epoch(e)
	}
	_, err := l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		rec = p.Get(ctx, l.keys.cred(id))
		denied = p.Exists(ctx, l.keys.deny(id))
		if len(ekeys) > 0 {
			eps = p.MGet(ctx, ekeys...)
		}
		marker = l.gen.readMarker(ctx, p)
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return broker.Credential{}, false, time.Time{}, wrapErr("reading credential "+id, err)
	}
	genID, genBefore, present := markerSeen(marker)
	if err := l.gen.observe(ctx, genID, present); err != nil {
		return broker.Credential{}, false, time.Time{}, err
	}
	if !present {
		l.gen.mu.Lock()
		genID, genBefore = l.gen.id, l.gen.before
		l.gen.mu.Unlock()
	}
	if err := rec.Err(); err != nil {
		return broker.Credential{}, false, genBefore, wrapErr("reading credential "+id, err)
	}
	c, err := decodeCred([]byte(rec.Val()))
	if err != nil {
		return broker.Credential{}, false, time.Time{}, fmt.Errorf("reading credential %s: %w", id, err)
	}
	// The global epoch covers what earlier generations recorded (records
	// that outlived the marker, e.g. under eviction); a record of this
	// generation was written after the loss was known.
	var latest int64
	if !genBefore.IsZero() && recordGen([]byte(rec.Val())) != genID {
		latest = genBefore.UnixMilli()
	}
	if eps != nil {
		for _, v := range eps.Val() {
			s, _ := v.(string)
			if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > latest {
				latest = n
			}
		}
	}
	return c, denied.Val() > 0, fromMs(latest), nil
}

// recordGen is the generation a credential record was written in.
func recordGen(b []byte) string {
	var r struct {
		Gen string `json:"gen"`
	}
	_ = json.Unmarshal(b, &r)
	return r.Gen
}

// denyScript puts one credential on the deny list and the feed.
// KEYS: deny key, feed. ARGV: task id, expire-at ms, jti, exp (unix s),
// feed max len, feed life ms.
var denyScript = redis.NewScript(luaCommon + `
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'type', 'revoked', 'jti', ARGV[3], 'task_id', ARGV[1], 'exp', ARGV[4])
expire_at_least(KEYS[2], now_ms() + tonumber(ARGV[6]))
return 1
`)

// Deny implements broker.EpochStore: the deny entry lives until exp (at
// least one second).
func (l *RedisLedger) Deny(ctx context.Context, jti, taskID string, exp time.Time) error {
	at := max(exp.UnixMilli(), time.Now().Add(time.Second).UnixMilli())
	err := denyScript.Run(ctx, l.c, []string{l.keys.deny(jti), l.keys.feed()}, taskID, at, jti,
		exp.Unix(), FeedMaxLen, broker.EpochTTL.Milliseconds()).Err()
	return wrapErr("denying credential "+jti, err)
}

// setEpochScript moves an epoch forward and publishes it, or does nothing.
// KEYS: epoch, epochs hash, feed. ARGV: before ms, expire-at ms, hash field,
// dimension, key, max len, trim-below ms. The hash and the stream live at
// least as long as the epoch.
var setEpochScript = redis.NewScript(luaCommon + `
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) <= cur then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'type', 'epoch', 'dimension', ARGV[4], 'key', ARGV[5], 'before', ARGV[1])
redis.call('XTRIM', KEYS[3], 'MINID', '~', ARGV[7])
expire_at_least(KEYS[2], tonumber(ARGV[2]))
expire_at_least(KEYS[3], tonumber(ARGV[2]))
return 1
`)

// SetEpoch implements broker.EpochStore.
func (l *RedisLedger) SetEpoch(ctx context.Context, e broker.Epoch) error {
	before := e.Before.UnixMilli()
	expireAt := e.Before.Add(broker.EpochTTL)
	if !expireAt.After(time.Now()) {
		return nil // everything it would cover has expired by itself
	}
	err := setEpochScript.Run(ctx, l.c, []string{l.keys.epoch(e), l.keys.epochs(), l.keys.feed()},
		before, expireAt.UnixMilli(), string(e.Dimension)+" "+e.Key, string(e.Dimension), e.Key,
		FeedMaxLen, time.Now().Add(-broker.EpochTTL).UnixMilli()).Err()
	return wrapErr("setting epoch "+string(e.Dimension)+" "+e.Key, err)
}

// SaveJob implements incident.JobStore.
func (l *RedisLedger) SaveJob(ctx context.Context, j incident.RevocationJob) error {
	b, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("encoding job %s: %w", j.ID, err)
	}
	// A job's record lives the retention after its last save (a running
	// job saves after every batch); the running set as long as its newest
	// member could.
	life := max(l.retention, jobMinRetention)
	_, err = l.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, l.keys.job(j.ID), b, life)
		if j.State == incident.JobDone {
			p.SRem(ctx, l.keys.jobsRunning(), j.ID)
			p.Del(ctx, l.keys.jobLease(j.ID))
		} else {
			p.SAdd(ctx, l.keys.jobsRunning(), j.ID)
			p.PExpire(ctx, l.keys.jobsRunning(), life)
		}
		return nil
	})
	return wrapErr("saving job "+j.ID, err)
}

// Job implements incident.JobStore.
func (l *RedisLedger) Job(ctx context.Context, id string) (incident.RevocationJob, error) {
	b, err := l.c.Get(ctx, l.keys.job(id)).Bytes()
	if err != nil {
		return incident.RevocationJob{}, wrapErr("reading job "+id, err)
	}
	var j incident.RevocationJob
	if err := json.Unmarshal(b, &j); err != nil {
		return incident.RevocationJob{}, fmt.Errorf("decoding job %s: %w", id, err)
	}
	return j, nil
}

// Unfinished implements incident.JobStore.
func (l *RedisLedger) Unfinished(ctx context.Context) ([]string, error) {
	ids, err := l.c.SMembers(ctx, l.keys.jobsRunning()).Result()
	if err != nil {
		return nil, wrapErr("listing running jobs", err)
	}
	slices.Sort(ids)
	return ids, nil
}

var leaseScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// Lease implements incident.JobStore.
func (l *RedisLedger) Lease(ctx context.Context, id, owner string, ttl time.Duration) (bool, error) {
	n, err := leaseScript.Run(ctx, l.c, []string{l.keys.jobLease(id)}, owner, ttl.Milliseconds()).Int()
	if err != nil {
		return false, wrapErr("leasing job "+id, err)
	}
	return n == 1, nil
}

// globEscaper escapes a key part for SCAN MATCH.
var globEscaper = strings.NewReplacer(`\`, `\\`, "*", `\*`, "?", `\?`, "[", `\[`, "]", `\]`)

// Candidates implements incident.JobStore. It walks the most selective index
// the selector names with ZSCAN (which returns every member present for the
// whole walk, perhaps twice; the job is idempotent). The cursor is
// "<index key> <zscan cursor>"; indexes are walked in key order.
func (l *RedisLedger) Candidates(ctx context.Context, sel incident.Selector, cursor string, limit int) ([]string, string, error) {
	if sel.TaskID != "" {
		if cursor != "" {
			return nil, "", nil
		}
		return []string{sel.TaskID}, "", nil
	}
	sources, err := l.sources(ctx, sel)
	if err != nil {
		return nil, "", err
	}
	key, zc := "", uint64(0)
	if cursor != "" {
		k, c, ok := strings.Cut(cursor, " ")
		n, perr := strconv.ParseUint(c, 10, 64)
		if !ok || perr != nil {
			return nil, "", fmt.Errorf("bad job cursor %q", cursor)
		}
		key, zc = k, n
	}
	i, found := slices.BinarySearch(sources, key)
	if !found {
		zc = 0 // that index is gone: start the next one from its top
	}
	for ; i < len(sources); i, zc = i+1, 0 {
		vals, next, err := l.c.ZScan(ctx, sources[i], zc, "", int64(limit)).Result()
		if err != nil {
			return nil, "", wrapErr("scanning "+sources[i], err)
		}
		ids := make([]string, 0, len(vals)/2)
		for j := 0; j < len(vals); j += 2 {
			ids = append(ids, vals[j])
		}
		switch {
		case next != 0:
			return ids, sources[i] + " " + strconv.FormatUint(next, 10), nil
		case i+1 < len(sources):
			return ids, sources[i+1] + " 0", nil
		default:
			return ids, "", nil
		}
	}
	return nil, "", nil
}

// sources are the index keys whose union holds every task sel can match.
func (l *RedisLedger) sources(ctx context.Context, sel incident.Selector) ([]string, error) {
	switch {
	case sel.Agent != "" && sel.Issuer != "":
		return []string{l.keys.agentIndex(sel.Issuer, sel.Agent)}, nil
	case sel.Agent != "":
		return l.scanKeys(ctx, globEscaper.Replace(l.keys.prefix)+":idx:agent:*:"+globEscaper.Replace(part(sel.Agent)))
	case sel.Template != "":
		return []string{l.keys.templateIndex(sel.Template)}, nil
	case sel.Issuer != "":
		return []string{l.keys.issuerIndex(sel.Issuer)}, nil
	default:
		return l.scanKeys(ctx, globEscaper.Replace(l.keys.prefix)+":idx:issuer:*")
	}
}

func (l *RedisLedger) scanKeys(ctx context.Context, match string) ([]string, error) {
	var out []string
	node, err := scanNode(ctx, l.c, l.keys.prefix)
	if err != nil {
		return nil, err
	}
	iter := node.Scan(ctx, 0, match, 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		// "*" also spans ":" so an agent index of another agent whose name
		// ends the same way could match; keep exact ones only.
		if strings.Count(strings.TrimPrefix(k, l.keys.prefix+":idx:"), ":") == strings.Count(strings.TrimPrefix(match, globEscaper.Replace(l.keys.prefix)+":idx:"), ":") {
			out = append(out, k)
		}
	}
	if err := iter.Err(); err != nil {
		return nil, wrapErr("scanning indexes", err)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Tasks implements incident.JobStore in one pipelined round trip.
func (l *RedisLedger) Tasks(ctx context.Context, ids []string) ([]broker.Task, [][]broker.Credential, error) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	hashes := make([]*redis.MapStringStringCmd, len(ids))
	recs := make([]*redis.StringSliceCmd, len(ids))
	_, err := l.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			hashes[i] = p.HGetAll(ctx, l.keys.task(id))
			recs[i] = p.LRange(ctx, l.keys.taskCreds(id), 0, -1)
		}
		return nil
	})
	if err != nil {
		return nil, nil, wrapErr("reading tasks", err)
	}
	tasks := make([]broker.Task, 0, len(ids))
	creds := make([][]broker.Credential, 0, len(ids))
	for i, id := range ids {
		if len(hashes[i].Val()) == 0 {
			continue
		}
		t, cs, err := decodeTask(id, hashes[i].Val(), recs[i].Val())
		if err != nil {
			return nil, nil, err
		}
		tasks = append(tasks, t)
		creds = append(creds, cs)
	}
	return tasks, creds, nil
}

// RedisFeed is the revocation feed: a Redis stream written by the same
// scripts that deny credentials and set epochs, so it misses none.
type RedisFeed struct {
	c    redis.UniversalClient
	keys keys
}

var _ broker.Feed = (*RedisFeed)(nil)

// Snapshot implements broker.Feed.
func (f *RedisFeed) Snapshot(ctx context.Context, now time.Time) ([]broker.FeedEntry, string, error) {
	var out []broker.FeedEntry
	cursor, start := "0-0", "-"
	for {
		msgs, err := f.c.XRangeN(ctx, f.keys.feed(), start, "+", 10000).Result()
		if err != nil {
			return nil, "", wrapErr("reading the revocation feed", err)
		}
		for _, m := range msgs {
			cursor = m.ID
			if e, ok := decodeFeed(m); ok && e.Epoch == nil && e.Control == nil && e.Exp.After(now) {
				out = append(out, e)
			}
		}
		if len(msgs) < 10000 {
			break
		}
		start = "(" + cursor
	}
	eps, err := f.c.HGetAll(ctx, f.keys.epochs()).Result()
	if err != nil {
		return nil, "", wrapErr("reading epochs", err)
	}
	var stale []string
	for field, v := range eps {
		dim, key, _ := strings.Cut(field, " ")
		ms, _ := strconv.ParseInt(v, 10, 64)
		before := fromMs(ms)
		if !before.Add(broker.EpochTTL).After(now) {
			stale = append(stale, field)
			continue
		}
		out = append(out, broker.FeedEntry{Epoch: &broker.Epoch{Dimension: broker.Dimension(dim), Key: key, Before: before}})
	}
	if len(stale) > 0 {
		_ = f.c.HDel(ctx, f.keys.epochs(), stale...).Err() // best effort: it only saves space
	}
	// The controls in force, read after the stream: a change made since
	// the cursor is also replayed by the stream after it.
	cm, err := f.c.HGetAll(ctx, f.keys.controls()).Result()
	if err != nil {
		return nil, "", wrapErr("reading controls", err)
	}
	controls, err := decodeControls(cm)
	if err != nil {
		return nil, "", err
	}
	for i := range controls {
		out = append(out, broker.FeedEntry{Control: &controls[i], ControlActive: true})
	}
	return out, cursor, nil
}

// Follow implements broker.Feed with a blocking XREAD.
func (f *RedisFeed) Follow(ctx context.Context, cursor string, wait time.Duration) ([]broker.FeedEntry, string, error) {
	if cursor == "" {
		last, err := f.c.XRevRangeN(ctx, f.keys.feed(), "+", "-", 1).Result()
		if err != nil {
			return nil, "", wrapErr("reading the revocation feed", err)
		}
		cursor = "0-0"
		if len(last) > 0 {
			cursor = last[0].ID
		}
	}
	if !validStreamID(cursor) {
		return nil, "", &broker.Error{Code: broker.CodeInvalid, Message: "cursor must be a stream id such as 1700000000000-0", Field: "cursor"}
	}
	res, err := f.c.XRead(ctx, &redis.XReadArgs{Streams: []string{f.keys.feed(), cursor}, Count: 1000, Block: wait}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, cursor, nil
	}
	if err != nil {
		return nil, "", wrapErr("following the revocation feed", err)
	}
	var out []broker.FeedEntry
	for _, s := range res {
		for _, m := range s.Messages {
			cursor = m.ID
			if e, ok := decodeFeed(m); ok {
				out = append(out, e)
			}
		}
	}
	return out, cursor, nil
}

func validStreamID(s string) bool {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		seq = "0"
	}
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return err1 == nil && err2 == nil
}

func decodeFeed(m redis.XMessage) (broker.FeedEntry, bool) {
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	e := broker.FeedEntry{Cursor: m.ID}
	switch str("type") {
	case "revoked":
		exp, _ := strconv.ParseInt(str("exp"), 10, 64)
		e.JTI, e.TaskID, e.Exp = str("jti"), str("task_id"), time.Unix(exp, 0).UTC()
	case "epoch":
		ms, _ := strconv.ParseInt(str("before"), 10, 64)
		e.Epoch = &broker.Epoch{Dimension: broker.Dimension(str("dimension")), Key: str("key"), Before: fromMs(ms)}
	case "control":
		e.Control = &broker.Control{Kind: broker.ControlKind(str("kind")), Target: str("target"), Issuer: str("issuer")}
		e.ControlActive = str("active") == "1"
	default:
		return e, false
	}
	return e, true
}

// Controls is the broker.ControlStore in Redis, with an in-memory copy that
// every replica refreshes when told over pub/sub (and every refresh
// interval in any case). Check answers from the copy and fails closed
// while the copy cannot be trusted: before the first load, and after a
// refresh failed; a Check that finds the copy failed reloads it at once
// (one reload in flight at a time), so declarations recover as soon as
// Redis answers again rather than at the next refresh.
//
// Controls lost with Redis's data do not lapse: each refresh reads the
// ledger's generation marker (generation.go) in the same round trip, and
// when it changed the controls this replica last knew are written back
// (HSETNX: one an admin set since is kept) and logged. A replica that
// never loaded them (every replica restarted together with an empty
// Redis) cannot know them: that is why Redis needs durable persistence.
type Controls struct {
	c       redis.UniversalClient
	keys    keys
	refresh time.Duration
	gen     *generation
	log     *slog.Logger

	mu     sync.RWMutex
	list   []broker.Control
	loaded bool
	err    error

	// reloading is closed when the reload a failed Check started ends.
	reloadMu  sync.Mutex
	reloading chan struct{}
}

var _ broker.ControlStore = (*Controls)(nil)

// NewControls returns the control store under prefix (default "valet").
// Call Run to keep it fresh; until its first load, Check fails closed.
func NewControls(c redis.UniversalClient, prefix string, refresh time.Duration) (*Controls, error) {
	if c == nil {
		return nil, errors.New("controls: client cannot be nil")
	}
	if prefix == "" {
		prefix = "valet"
	}
	if err := checkClientPrefix(c, prefix); err != nil {
		return nil, fmt.Errorf("controls: %w", err)
	}
	if refresh <= 0 {
		refresh = 5 * time.Second
	}
	k := keys{prefix: prefix}
	return &Controls{c: c, keys: k, refresh: refresh, gen: newGeneration(c, k, nil, nil), log: slog.Default()}, nil
}

// Run subscribes to changes and reloads on each, and every refresh
// interval, until ctx ends.
func (s *Controls) Run(ctx context.Context) {
	sub := s.c.Subscribe(ctx, s.keys.controlsChannel())
	defer sub.Close()
	// Wait for the subscription before the first load, so no change made
	// in between is missed.
	if _, err := sub.Receive(ctx); err != nil {
		s.fail(err)
	}
	s.Reload(ctx)
	msgs := sub.Channel()
	t := time.NewTicker(s.refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-msgs:
			if !ok {
				return
			}
			s.Reload(ctx)
		case <-t.C:
			s.Reload(ctx)
		}
	}
}

// Reload reads every control from Redis into the copy, and writes the
// copy back first if Redis lost its data since the last reload.
func (s *Controls) Reload(ctx context.Context) {
	var all *redis.MapStringStringCmd
	var marker *redis.SliceCmd
	_, err := s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		all = p.HGetAll(ctx, s.keys.controls())
		marker = s.gen.readMarker(ctx, p)
		return nil
	})
	if err != nil {
		s.fail(wrapErr("reading controls", err))
		return
	}
	// The controls only watch the marker; the ledger starts generations
	// (on its clock). A missing marker or a new id means the data was lost.
	s.gen.mu.Lock()
	known := s.gen.id
	id, _, present := markerSeen(marker)
	if present {
		s.gen.id = id
	}
	s.gen.mu.Unlock()
	list, err := decodeControls(all.Val())
	if err != nil {
		s.fail(err)
		return
	}
	if known != "" && (!present || id != known) {
		if list, err = s.restore(ctx, list); err != nil {
			s.fail(err)
			return
		}
	}
	s.mu.Lock()
	s.list, s.loaded, s.err = list, true, nil
	s.mu.Unlock()
}

// restore writes back the controls of the copy that Redis no longer holds
// and returns the union.
func (s *Controls) restore(ctx context.Context, found []broker.Control) ([]broker.Control, error) {
	s.mu.RLock()
	cached := slices.Clone(s.list)
	s.mu.RUnlock()
	have := map[string]bool{}
	for _, c := range found {
		have[c.ID()] = true
	}
	var missing []broker.Control
	for _, c := range cached {
		if !have[c.ID()] {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		for _, c := range missing {
			if _, err := s.run(ctx, "restore", c); err != nil {
				return nil, wrapErr("restoring controls lost with Redis's data", err)
			}
		}
	}
	ids := make([]string, len(missing))
	for i, c := range missing {
		ids[i] = c.ID()
	}
	s.log.ErrorContext(ctx, "Redis lost its data: the controls this replica knew were written back", "restored", ids, "held", len(found))
	out := append(found, missing...)
	slices.SortFunc(out, func(a, b broker.Control) int { return strings.Compare(a.ID(), b.ID()) })
	return out, nil
}

func (s *Controls) fail(err error) {
	s.mu.Lock()
	s.err = err
	s.mu.Unlock()
}

// Check implements broker.ControlStore.
func (s *Controls) Check(ctx context.Context, issuer, subject, template string) (*broker.Control, error) {
	s.mu.RLock()
	failed := s.err != nil || !s.loaded
	s.mu.RUnlock()
	if failed {
		s.reloadNow(ctx)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.err != nil:
		return nil, fmt.Errorf("controls: %w: %w", broker.ErrUnavailable, s.err)
	case !s.loaded:
		return nil, fmt.Errorf("controls: %w: not loaded yet", broker.ErrUnavailable)
	}
	for i := range s.list {
		if s.list[i].Matches(issuer, subject, template) {
			c := s.list[i]
			return &c, nil
		}
	}
	return nil, nil
}

// reloadNow reloads the copy, joining a reload already in flight rather
// than starting another, and waits for it as long as ctx allows.
func (s *Controls) reloadNow(ctx context.Context) {
	s.reloadMu.Lock()
	done := s.reloading
	if done == nil {
		done = make(chan struct{})
		s.reloading = done
		go func() {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			s.Reload(rctx)
			cancel()
			s.reloadMu.Lock()
			s.reloading = nil
			s.reloadMu.Unlock()
			close(done)
		}()
	}
	s.reloadMu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// List implements broker.ControlStore, ordered by id.
func (s *Controls) List(ctx context.Context) ([]broker.Control, error) {
	m, err := s.c.HGetAll(ctx, s.keys.controls()).Result()
	if err != nil {
		return nil, wrapErr("reading controls", err)
	}
	return decodeControls(m)
}

func decodeControls(m map[string]string) ([]broker.Control, error) {
	out := make([]broker.Control, 0, len(m))
	for id, v := range m {
		var c broker.Control
		if err := json.Unmarshal([]byte(v), &c); err != nil {
			return nil, fmt.Errorf("decoding control %s: %w", id, err)
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b broker.Control) int { return strings.Compare(a.ID(), b.ID()) })
	return out, nil
}

// controlScript changes one control, tells the replicas (pub/sub) and
// tells the tool servers (a control entry on the revocation feed), in one
// script so that no change misses the feed. KEYS: controls hash, feed.
// ARGV: put|restore|delete, id, JSON, kind, target, issuer, feed max len,
// feed life ms, channel. Returns how many fields it set or removed.
var controlScript = redis.NewScript(luaCommon + `
local n, active
if ARGV[1] == 'delete' then
  n, active = redis.call('HDEL', KEYS[1], ARGV[2]), '0'
elseif ARGV[1] == 'restore' then
  n, active = redis.call('HSETNX', KEYS[1], ARGV[2], ARGV[3]), '1'
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  n, active = 1, '1'
end
if n > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'type', 'control', 'kind', ARGV[4], 'target', ARGV[5], 'issuer', ARGV[6], 'active', active)
  expire_at_least(KEYS[2], now_ms() + tonumber(ARGV[8]))
end
redis.call('PUBLISH', ARGV[9], ARGV[2])
return n
`)

// run runs controlScript for c.
func (s *Controls) run(ctx context.Context, op string, c broker.Control) (int64, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return 0, fmt.Errorf("encoding control: %w", err)
	}
	return controlScript.Run(ctx, s.c, []string{s.keys.controls(), s.keys.feed()}, op, c.ID(), b,
		string(c.Kind), c.Target, c.Issuer, FeedMaxLen, broker.EpochTTL.Milliseconds(), s.keys.controlsChannel()).Int64()
}

// Put implements broker.ControlStore: write, announce to the replicas and
// publish on the revocation feed in one script, then refresh this
// replica's copy.
func (s *Controls) Put(ctx context.Context, c broker.Control) error {
	if _, err := s.run(ctx, "put", c); err != nil {
		return wrapErr("saving control "+c.ID(), err)
	}
	s.Reload(ctx)
	return nil
}

// Delete implements broker.ControlStore: a control that was there is
// lifted on the revocation feed too.
func (s *Controls) Delete(ctx context.Context, c broker.Control) (bool, error) {
	n, err := s.run(ctx, "delete", c)
	if err != nil {
		return false, wrapErr("deleting control "+c.ID(), err)
	}
	s.Reload(ctx)
	return n > 0, nil
}
