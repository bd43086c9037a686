package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
)

// Keys of agent controls, beside those in doc.go:
//
//	valet:task:<id>:children             set: ids of the tasks delegated from task <id>
//	valet:once:<key>                     string: a one-time use (DPoP proof jti, action token jti), until its expiry
//	valet:count:<key>                    string: a per-task counter (budgets), until the task's deadline
func (k keys) children(id string) string { return k.task(id) + ":children" }
func (k keys) once(key string) string    { return k.prefix + ":once:" + part(key) }
func (k keys) count(key string) string   { return k.prefix + ":count:" + part(key) }

var _ broker.Limiter = (*RedisLedger)(nil)

// Children implements broker.Ledger.
func (l *RedisLedger) Children(ctx context.Context, id string) ([]string, error) {
	ids, err := l.c.SMembers(ctx, l.keys.children(id)).Result()
	if err != nil {
		return nil, wrapErr("listing children of task "+id, err)
	}
	return ids, nil
}

// Once implements broker.Limiter with SET NX PXAT.
func (l *RedisLedger) Once(ctx context.Context, key string, until time.Time) (bool, error) {
	if until.IsZero() {
		return false, errors.New("recording one-time use: no expiry")
	}
	_, err := l.c.SetArgs(ctx, l.keys.once(key), "1", redis.SetArgs{Mode: "NX", ExpireAt: until}).Result()
	switch {
	case errors.Is(err, redis.Nil): // NX: the key was there already
		return false, nil
	case err != nil:
		return false, wrapErr("recording one-time use", err)
	}
	return true, nil
}

// countScript adds one to a counter whose expiry only ever moves later.
// KEYS: counter. ARGV: expire-at ms.
var countScript = redis.NewScript(luaCommon + `
local n = redis.call('INCR', KEYS[1])
expire_at_least(KEYS[1], ARGV[1])
return n
`)

// Count implements broker.Limiter in one script: INCR, and the key's
// expiry moves to until if that is later than it was.
func (l *RedisLedger) Count(ctx context.Context, key string, until time.Time) (int64, error) {
	n, err := countScript.Run(ctx, l.c, []string{l.keys.count(key)}, until.UnixMilli()).Int64()
	if err != nil {
		return 0, wrapErr("counting "+key, err)
	}
	return n, nil
}

// treeFields are the task hash fields of delegation and proof-of-possession;
// empty ones are left out.
func treeFields(t broker.Task) []any {
	var f []any
	add := func(k, v string) {
		if v != "" {
			f = append(f, k, v)
		}
	}
	add("parent", t.Parent)
	add("root", t.Root)
	if t.Depth > 0 {
		f = append(f, "depth", strconv.Itoa(t.Depth))
	}
	add("subject", t.Subject)
	add("subject_issuer", t.SubjectIssuer)
	if len(t.Act) > 0 {
		act, _ := json.Marshal(t.Act) // a []string always encodes
		f = append(f, "act", string(act))
	}
	add("jkt", t.JKT)
	if len(t.Chain) > 0 {
		chain, _ := json.Marshal(t.Chain) // strings only: always encodes
		f = append(f, "chain", string(chain))
	}
	return f
}

func decodeTreeFields(t *broker.Task, h map[string]string) error {
	t.Parent, t.Root, t.Subject, t.JKT = h["parent"], h["root"], h["subject"], h["jkt"]
	t.SubjectIssuer = h["subject_issuer"]
	if v, ok := h["depth"]; ok {
		d, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("field depth: %w", err)
		}
		t.Depth = d
	}
	if v, ok := h["act"]; ok {
		if err := json.Unmarshal([]byte(v), &t.Act); err != nil {
			return fmt.Errorf("field act: %w", err)
		}
	}
	if v, ok := h["chain"]; ok {
		if err := json.Unmarshal([]byte(v), &t.Chain); err != nil {
			return fmt.Errorf("field chain: %w", err)
		}
	}
	return nil
}
