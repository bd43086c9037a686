package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
)

// RedisTrail reads the audit stream a broker writes to Redis
// (audit.RedisWriter): the newest events for the live view, and the chain
// check of `valet audit verify --redis`.
type RedisTrail struct {
	rc     redis.UniversalClient
	prefix string
}

// NewRedisTrail reads the stream under prefix (default "valet").
func NewRedisTrail(rc redis.UniversalClient, prefix string) (*RedisTrail, error) {
	if rc == nil {
		return nil, errors.New("console: the Redis client cannot be nil")
	}
	if prefix == "" {
		prefix = "valet"
	}
	return &RedisTrail{rc: rc, prefix: prefix}, nil
}

var streamID = regexp.MustCompile(`^[0-9]{1,20}-[0-9]{1,20}$`)

// Recent implements Trail.
func (t *RedisTrail) Recent(ctx context.Context, after string, n int) ([]broker.Event, string, error) {
	key := t.prefix + ":audit"
	var msgs []redis.XMessage
	var err error
	if after == "" {
		msgs, err = t.rc.XRevRangeN(ctx, key, "+", "-", int64(n)).Result()
		for i, j := 0, len(msgs)-1; i < j; i, j = i+1, j-1 {
			msgs[i], msgs[j] = msgs[j], msgs[i]
		}
	} else {
		if !streamID.MatchString(after) {
			return nil, "", &broker.Error{Code: broker.CodeInvalid, Message: "after is not a cursor Valet gave", Field: "after"}
		}
		msgs, err = t.rc.XRangeN(ctx, key, "("+after, "+", int64(n)).Result()
	}
	if err != nil {
		return nil, "", fmt.Errorf("reading the audit stream: %w", err)
	}
	cursor := after
	out := make([]broker.Event, 0, len(msgs))
	for _, m := range msgs {
		cursor = m.ID
		line, _ := m.Values["line"].(string)
		var rec audit.Record
		var ev broker.Event
		if json.Unmarshal([]byte(line), &rec) != nil || json.Unmarshal(rec.Event, &ev) != nil {
			continue
		}
		out = append(out, ev)
	}
	return out, cursor, nil
}

// Verify implements Trail.
func (t *RedisTrail) Verify(ctx context.Context) (ChainStatus, error) {
	rep, err := audit.VerifyStream(ctx, t.rc, t.prefix)
	st := ChainStatus{Events: rep.Events, Chains: rep.Chains}
	if errors.Is(err, audit.ErrBroken) {
		st.Broken = err.Error()
		return st, nil
	}
	return st, err
}
