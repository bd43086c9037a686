package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/inventory"
)

// RedisInventory is the inventory.Store kept in Redis, shared by every
// broker replica. Each agent is one hash, {prefix}:{inv}:agent:<id>
// (fields issuer, subject, first, last in unix ms, labels as JSON, and
// t:<template> per template used), expiring at last seen plus the
// retention; three sorted sets ordered by member (last seen, first seen,
// subject) index them for listing and are cleaned of stale members as
// listings pass them. All keys share the {inv} hash tag, so the record
// script runs in one slot. It is safe for concurrent use; errors meaning
// Redis could not serve wrap broker.ErrUnavailable.
type RedisInventory struct {
	c         redis.UniversalClient
	prefix    string
	retention time.Duration
	now       func() time.Time
}

var _ inventory.Store = (*RedisInventory)(nil)

// Bounds of one listing: members read per round trip, and in all.
const (
	invBatch   = 200
	invMaxScan = 5000
)

// NewRedisInventory returns the inventory kept in c under prefix (default
// "valet"), forgetting agents not seen for retention
// (DefaultInventoryRetention if zero); now is the clock (nil: time.Now).
func NewRedisInventory(c redis.UniversalClient, prefix string, retention time.Duration, now func() time.Time) (*RedisInventory, error) {
	if c == nil {
		return nil, errors.New("redis inventory: client cannot be nil")
	}
	if retention < 0 {
		return nil, fmt.Errorf("redis inventory: retention %v is negative", retention)
	}
	if prefix == "" {
		prefix = "valet"
	}
	if retention == 0 {
		retention = DefaultInventoryRetention
	}
	if now == nil {
		now = time.Now
	}
	return &RedisInventory{c: c, prefix: prefix + ":{inv}", retention: retention, now: now}, nil
}

func (r *RedisInventory) agentKey(id string) string { return r.prefix + ":agent:" + id }
func (r *RedisInventory) index(s inventory.Sort) string {
	return r.prefix + ":by:" + string(s)
}

// timeMember is an index member ordering newest first: 13 digits of the
// time subtracted from the largest 13-digit number, then the id.
func timeMember(ms int64, id string) string {
	return fmt.Sprintf("%013d:%s", int64(9999999999999)-ms, id)
}

func subjectMember(subject, id string) string { return subject + "\x00" + id }

// inventoryScript merges sightings. KEYS: by:last_seen, by:first_seen,
// by:subject, then one agent hash per sighting. ARGV: retention ms, max
// templates, the cut (unix ms: an agent last seen before it is forgotten),
// then per sighting id, issuer, subject, template, at ms,
// labels JSON.
var inventoryScript = redis.NewScript(`
local ret, maxT, cut = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function tm(ms, id) return string.format('%013d', 9999999999999 - ms) .. ':' .. id end
for i = 1, #KEYS - 3 do
  local k, b = KEYS[3 + i], 3 + (i - 1) * 6
  local id, iss, sub, tpl, at, labels = ARGV[b+1], ARGV[b+2], ARGV[b+3], ARGV[b+4], tonumber(ARGV[b+5]), ARGV[b+6]
  local f = redis.call('HMGET', k, 'first', 'last', 'subject')
  local first, last = tonumber(f[1]), tonumber(f[2])
  if last and last < cut then
    -- forgotten by the broker's clock: start anew
    redis.call('ZREM', KEYS[1], tm(last, id))
    redis.call('ZREM', KEYS[2], tm(first, id))
    redis.call('DEL', k)
    first, last = nil, nil
  end
  if not first or at < first then
    if first then redis.call('ZREM', KEYS[2], tm(first, id)) end
    redis.call('HSET', k, 'first', at)
    redis.call('ZADD', KEYS[2], 0, tm(at, id))
  end
  if not last or at >= last then
    if last then redis.call('ZREM', KEYS[1], tm(last, id)) end
    redis.call('HSET', k, 'last', at, 'labels', labels, 'issuer', iss, 'subject', sub)
    redis.call('ZADD', KEYS[1], 0, tm(at, id))
    redis.call('ZADD', KEYS[3], 0, sub .. '\0' .. id)
    redis.call('PEXPIREAT', k, at + ret)
  end
  if tpl ~= '' and redis.call('HEXISTS', k, 't:' .. tpl) == 0 and redis.call('HLEN', k) < 5 + maxT then
    redis.call('HSET', k, 't:' .. tpl, 1)
  end
end
return 0
`)

// Record merges sightings (see inventory.Store) in one script call.
func (r *RedisInventory) Record(ctx context.Context, seen []inventory.Seen) error {
	if len(seen) == 0 {
		return nil
	}
	keys := []string{r.index(inventory.SortLastSeen), r.index(inventory.SortFirstSeen), r.index(inventory.SortSubject)}
	args := []any{r.retention.Milliseconds(), inventory.MaxTemplates, r.now().Add(-r.retention).UnixMilli()}
	for _, s := range seen {
		id := inventory.ID(s.Issuer, s.Subject)
		labels, err := json.Marshal(s.Labels)
		if err != nil {
			return fmt.Errorf("encoding labels: %w", err)
		}
		keys = append(keys, r.agentKey(id))
		args = append(args, id, s.Issuer, s.Subject, s.Template, s.At.UnixMilli(), string(labels))
	}
	return wrapErr("recording sightings", inventoryScript.Run(ctx, r.c, keys, args...).Err())
}

// decodeAgent reads an agent hash; ok is false when it is empty.
func decodeAgent(id string, h map[string]string) (inventory.Agent, bool) {
	if len(h) == 0 || h["last"] == "" {
		return inventory.Agent{}, false
	}
	ms := func(f string) time.Time {
		n, _ := strconv.ParseInt(h[f], 10, 64)
		return time.UnixMilli(n).UTC()
	}
	a := inventory.Agent{ID: id, Issuer: h["issuer"], Subject: h["subject"], FirstSeen: ms("first"), LastSeen: ms("last"),
		Templates: []string{}, Labels: map[string]string{}}
	if l := h["labels"]; l != "" && l != "null" {
		_ = json.Unmarshal([]byte(l), &a.Labels)
	}
	for f := range maps.Keys(h) {
		if t, ok := strings.CutPrefix(f, "t:"); ok {
			a.Templates = append(a.Templates, t)
		}
	}
	slices.Sort(a.Templates)
	return a, true
}

func (r *RedisInventory) live(a inventory.Agent) bool {
	return !a.LastSeen.Before(r.now().Add(-r.retention).Truncate(time.Millisecond))
}

// Agent returns one agent (see inventory.Store).
func (r *RedisInventory) Agent(ctx context.Context, id string) (inventory.Agent, error) {
	if !inventory.ValidID(id) {
		return inventory.Agent{}, broker.ErrNotFound
	}
	h, err := r.c.HGetAll(ctx, r.agentKey(id)).Result()
	if err != nil {
		return inventory.Agent{}, wrapErr("reading agent", err)
	}
	a, ok := decodeAgent(id, h)
	if !ok || !r.live(a) {
		return inventory.Agent{}, broker.ErrNotFound
	}
	return a, nil
}

// member is agent a's member in the index of sort.
func member(a inventory.Agent, sort inventory.Sort) string {
	switch sort {
	case inventory.SortFirstSeen:
		return timeMember(a.FirstSeen.UnixMilli(), a.ID)
	case inventory.SortSubject:
		return subjectMember(a.Subject, a.ID)
	}
	return timeMember(a.LastSeen.UnixMilli(), a.ID)
}

// memberID is the agent id at the end of an index member.
func memberID(m string) string {
	if i := strings.LastIndexAny(m, ":\x00"); i >= 0 {
		return m[i+1:]
	}
	return m
}

// List returns one page (see inventory.Store): it walks the sort's index
// from the cursor, reading agents a batch per round trip, and stops at a
// full page or after invMaxScan members (a page may then be short, with a
// next cursor).
func (r *RedisInventory) List(ctx context.Context, q inventory.Query) (inventory.Page, error) {
	if err := q.Validate(); err != nil {
		return inventory.Page{}, err
	}
	start := "-"
	if q.Cursor != "" {
		c, err := inventory.DecodeCursor(q.Cursor, q.Sort)
		if err != nil {
			return inventory.Page{}, err
		}
		at := inventory.Agent{ID: c.ID, Subject: c.Key}
		if q.Sort != inventory.SortSubject {
			ms, _ := strconv.ParseInt(c.Key, 10, 64)
			at.LastSeen, at.FirstSeen = time.UnixMilli(ms), time.UnixMilli(ms)
		}
		start = "(" + member(at, q.Sort)
	}
	idx := r.index(q.Sort)
	page := inventory.Page{Agents: []inventory.Agent{}}
	scanned := 0
	for scanned < invMaxScan {
		ms, err := r.c.ZRangeArgs(ctx, redis.ZRangeArgs{Key: idx, Start: start, Stop: "+", ByLex: true, Count: invBatch}).Result()
		if err != nil {
			return inventory.Page{}, wrapErr("listing agents", err)
		}
		if len(ms) == 0 {
			return page, nil
		}
		pipe := r.c.Pipeline()
		reads := make([]*redis.MapStringStringCmd, len(ms))
		for i, m := range ms {
			reads[i] = pipe.HGetAll(ctx, r.agentKey(memberID(m)))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return inventory.Page{}, wrapErr("reading agents", err)
		}
		var stale []any
		for i, m := range ms {
			scanned++
			a, ok := decodeAgent(memberID(m), reads[i].Val())
			if !ok || member(a, q.Sort) != m {
				stale = append(stale, m)
				continue
			}
			if !r.live(a) || !q.Matches(a) {
				continue
			}
			if len(page.Agents) == q.Limit {
				page.NextCursor = inventory.CursorAfter(page.Agents[q.Limit-1], q.Sort)
				r.prune(ctx, idx, stale)
				return page, nil
			}
			page.Agents = append(page.Agents, a)
		}
		r.prune(ctx, idx, stale)
		start = "(" + ms[len(ms)-1]
		if len(ms) < invBatch {
			return page, nil
		}
	}
	// The scan budget is spent: the next page resumes after the last
	// member read.
	page.NextCursor = cursorAtMember(start[1:], memberID(start[1:]), q.Sort)
	return page, nil
}

// cursorAtMember is the cursor just after index member m (of agent id).
func cursorAtMember(m, id string, sort inventory.Sort) string {
	a := inventory.Agent{ID: id}
	if sort == inventory.SortSubject {
		a.Subject = strings.TrimSuffix(m, "\x00"+id)
	} else {
		n, _ := strconv.ParseInt(m[:13], 10, 64)
		a.LastSeen = time.UnixMilli(9999999999999 - n)
		a.FirstSeen = a.LastSeen
	}
	return inventory.CursorAfter(a, sort)
}

// prune removes stale members from an index; a failure only leaves them for
// the next listing to find.
func (r *RedisInventory) prune(ctx context.Context, idx string, stale []any) {
	if len(stale) > 0 {
		_ = r.c.ZRem(ctx, idx, stale...).Err()
	}
}
