package revocation

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
)

// A Redis that restarts empty (persistence off, a failover to an empty
// replica, a FLUSHALL) forgets every task, deny entry, epoch and control.
// The generation marker lets Valet notice:
//
//	valet:generation   hash: id (random), before (unix ms), created (unix ms); TTL broker.EpochTTL, refreshed every reaper pass and controls refresh
//
// It is written once per generation, by whichever replica first finds it
// missing, and read back in the round trips Valet already makes: the Record
// script refuses a write to another generation, and CredentialStatus, Due
// and the controls refresh read it in their pipelines. A missing marker
// starts a new generation whose "before" is the Redis clock at that moment:
// every credential issued at or before it is revoked (the global epoch,
// dimension "all", key "*"), put in the epochs hash and announced on the
// revocation feed so verifiers deny too. Every credential lives at most
// broker.EpochTTL, so a marker that merely expired (no Valet ran for that
// long) revokes nothing still alive.

// DimAll is the dimension of the global epoch a new generation sets: key
// "*", every credential.
const DimAll broker.Dimension = "all"

func (k keys) generation() string { return k.prefix + ":generation" }

// LossReport says that this process saw the ledger lose its data.
type LossReport struct {
	// DetectedAt is when this process noticed.
	DetectedAt time.Time
	// Before: every credential issued at or before it is revoked.
	Before time.Time
	// Previous and Current are the generation ids before and after.
	Previous, Current string
}

// generation tracks the marker for one client and prefix. It is safe for
// concurrent use.
type generation struct {
	c    redis.UniversalClient
	keys keys
	log  *slog.Logger
	now  func() time.Time
	// initMu makes concurrent first uses start one generation, not many.
	initMu sync.Mutex

	mu     sync.Mutex
	id     string
	before time.Time
	loss   *LossReport
}

func newGeneration(c redis.UniversalClient, k keys, log *slog.Logger, now func() time.Time) *generation {
	if log == nil {
		log = slog.Default()
	}
	if now == nil {
		now = time.Now
	}
	return &generation{c: c, keys: k, log: log, now: now}
}

// genInitScript starts a generation if none is there, or answers the one
// that is. KEYS: generation, epochs hash, feed. ARGV: new id, life ms, feed
// max length, now ms (Valet's clock: the one that stamps every iat the
// global epoch is compared with). Answers {id, before ms, 1 if it was
// created here}.
var genInitScript = redis.NewScript(luaCommon + `
local cur = redis.call('HMGET', KEYS[1], 'id', 'before')
if cur[1] then
  return {cur[1], cur[2] or '0', 0}
end
local now = tonumber(ARGV[4])
local nows = ARGV[4]
-- Verifiers compare with a JWT iat, whole seconds: they get the instant
-- rounded down, so a token minted in the same second after it still passes.
local secs = string.format('%d', math.floor(now / 1000) * 1000)
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'before', nows, 'created', nows)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'all *', secs)
expire_at_least(KEYS[2], now + tonumber(ARGV[2]))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'type', 'epoch', 'dimension', 'all', 'key', '*', 'before', secs)
expire_at_least(KEYS[3], now + tonumber(ARGV[2]))
return {ARGV[1], nows, 1}
`)

// current returns the generation id this process works in, starting or
// adopting one when it has none yet (one extra round trip, once).
func (g *generation) current(ctx context.Context) (string, error) {
	g.mu.Lock()
	id := g.id
	g.mu.Unlock()
	if id != "" {
		return id, nil
	}
	if err := g.observe(ctx, "", false); err != nil {
		return "", err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.id, nil
}

// observe takes what a round trip read from the marker: its id and whether
// it was there. A missing marker starts a new generation; an id other than
// the one this process knew means a loss (seen first by another replica).
func (g *generation) observe(ctx context.Context, seen string, present bool) error {
	g.mu.Lock()
	known := g.id
	g.mu.Unlock()
	if present && seen == known {
		return nil
	}
	g.initMu.Lock()
	defer g.initMu.Unlock()
	g.mu.Lock()
	known = g.id
	g.mu.Unlock()
	if present && seen == known {
		return nil
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	reply, err := genInitScript.Run(ctx, g.c, []string{g.keys.generation(), g.keys.epochs(), g.keys.feed()},
		hex.EncodeToString(b[:]), broker.EpochTTL.Milliseconds(), FeedMaxLen, g.now().UnixMilli()).Slice()
	if err != nil {
		return wrapErr("reading the ledger generation", err)
	}
	if len(reply) != 3 {
		return fmt.Errorf("reading the ledger generation: unexpected reply %v", reply)
	}
	id, _ := reply[0].(string)
	bs, _ := reply[1].(string)
	created, _ := reply[2].(int64)
	ms, _ := strconv.ParseInt(bs, 10, 64)
	before := fromMs(ms)

	g.mu.Lock()
	defer g.mu.Unlock()
	if g.id == id {
		return nil // a concurrent observe got there first
	}
	prev := g.id
	g.id, g.before = id, before
	switch {
	case prev != "":
		g.loss = &LossReport{DetectedAt: time.Now(), Before: before, Previous: prev, Current: id}
		g.log.ErrorContext(ctx, "REDIS LOST ITS DATA: the ledger generation changed; every credential issued before the loss is revoked (global epoch announced on the revocation feed). Give Redis durable persistence (appendonly yes, appendfsync everysec or always)",
			"previous_generation", prev, "generation", id, "revoked_before", before, "started_here", created == 1)
	case created == 1:
		g.log.WarnContext(ctx, "ledger generation started: Redis held none (a first start, or its data was lost or expired while no Valet ran); every credential issued before now is revoked",
			"generation", id, "revoked_before", before)
	default:
		g.log.InfoContext(ctx, "ledger generation", "generation", id, "revoked_before", before)
	}
	return nil
}

// lastLoss reports the last loss this process saw.
func (g *generation) lastLoss() (LossReport, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.loss == nil {
		return LossReport{}, false
	}
	return *g.loss, true
}

// readMarker queues, in a pipeline, the read of the marker and the refresh
// of its life; markerSeen decodes what came back.
func (g *generation) readMarker(ctx context.Context, p redis.Pipeliner) *redis.SliceCmd {
	cmd := p.HMGet(ctx, g.keys.generation(), "id", "before")
	p.PExpire(ctx, g.keys.generation(), broker.EpochTTL)
	return cmd
}

// markerSeen returns the marker's id, its revoked-before instant and
// whether it was there.
func markerSeen(cmd *redis.SliceCmd) (string, time.Time, bool) {
	v := cmd.Val()
	if len(v) != 2 {
		return "", time.Time{}, false
	}
	id, ok := v[0].(string)
	if !ok || id == "" {
		return "", time.Time{}, false
	}
	bs, _ := v[1].(string)
	ms, _ := strconv.ParseInt(bs, 10, 64)
	return id, fromMs(ms), true
}
