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

// RedisQueue is the broker.RevocationQueue shared by broker replicas. It
// lives in Redis, so failed revocations survive a broker restart. Keys,
// with the default prefix:
//
//	valet:retry:due        zset: credential ids scored by next attempt (unix ms),
//	                       expiring with its longest-lived record
//	valet:retry:rec:<id>   string: the pending revocation (JSON), expiring at
//	                       the credential's expiry plus the retention
//
// An id whose record has expired is dropped from the zset by Due.
type RedisQueue struct {
	c         redis.UniversalClient
	keys      keys
	retention time.Duration
}

var _ broker.RevocationQueue = (*RedisQueue)(nil)

// NewRedisQueue returns a queue on c. opts.Prefix and opts.Retention mean
// what they mean for the ledger: records vanish retention after their
// credential expires, which leaves the retry loop time to log an
// "expired unrevoked" credential.
func NewRedisQueue(c redis.UniversalClient, opts RedisOptions) (*RedisQueue, error) {
	if c == nil {
		return nil, errors.New("revocation: redis client cannot be nil")
	}
	if opts.Prefix == "" {
		opts.Prefix = "valet"
	}
	if err := checkClientPrefix(c, opts.Prefix); err != nil {
		return nil, fmt.Errorf("revocation queue: %w", err)
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	return &RedisQueue{c: c, keys: keys{prefix: opts.Prefix}, retention: opts.Retention}, nil
}

func (k keys) retryDue() string          { return k.prefix + ":retry:due" }
func (k keys) retryRec(id string) string { return k.prefix + ":retry:rec:" + part(id) }

type pendingRecord struct {
	Cred      credRecord `json:"credential"`
	Attempt   int        `json:"attempt"`
	Next      int64      `json:"next"`
	LastError string     `json:"last_error,omitempty"`
}

// Enqueue implements broker.RevocationQueue.
func (q *RedisQueue) Enqueue(ctx context.Context, c broker.Credential, attempt int, next time.Time, lastErr string) error {
	if err := validatePending(c, attempt); err != nil {
		return err
	}
	rec, err := json.Marshal(pendingRecord{Cred: toCredRecord(c), Attempt: attempt, Next: next.UnixMilli(), LastError: lastErr})
	if err != nil {
		return fmt.Errorf("encoding pending revocation: %w", err)
	}
	pipe := q.c.TxPipeline()
	pipe.Set(ctx, q.keys.retryRec(c.ID), rec, 0)
	pipe.PExpireAt(ctx, q.keys.retryRec(c.ID), c.ExpiresAt.Add(q.retention))
	pipe.ZAdd(ctx, q.keys.retryDue(), redis.Z{Score: float64(next.UnixMilli()), Member: c.ID})
	// The zset lives as long as its longest-lived record (NX sets a first
	// expiry, GT only moves it later).
	life := time.Until(c.ExpiresAt.Add(q.retention))
	pipe.ExpireNX(ctx, q.keys.retryDue(), life)
	pipe.ExpireGT(ctx, q.keys.retryDue(), life)
	_, err = pipe.Exec(ctx)
	return wrapErr("queueing revocation", err)
}

// Due implements broker.RevocationQueue.
func (q *RedisQueue) Due(ctx context.Context, now time.Time, limit int) ([]broker.PendingRevocation, error) {
	if limit <= 0 {
		return nil, nil
	}
	ids, err := q.c.ZRangeByScore(ctx, q.keys.retryDue(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, wrapErr("listing due revocations", err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	recKeys := make([]string, len(ids))
	for i, id := range ids {
		recKeys[i] = q.keys.retryRec(id)
	}
	vals, err := q.c.MGet(ctx, recKeys...).Result()
	if err != nil {
		return nil, wrapErr("reading due revocations", err)
	}
	var out []broker.PendingRevocation
	var gone []any
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			gone = append(gone, ids[i])
			continue
		}
		var r pendingRecord
		if err := json.Unmarshal([]byte(s), &r); err != nil {
			return nil, fmt.Errorf("decoding pending revocation %s: %w", ids[i], err)
		}
		out = append(out, broker.PendingRevocation{ID: ids[i], Credential: fromCredRecord(r.Cred), Attempt: r.Attempt,
			Next: time.UnixMilli(r.Next), LastError: r.LastError})
	}
	if len(gone) > 0 {
		if err := q.c.ZRem(ctx, q.keys.retryDue(), gone...).Err(); err != nil {
			return nil, wrapErr("trimming expired revocations", err)
		}
	}
	return out, nil
}

// Done implements broker.RevocationQueue.
func (q *RedisQueue) Done(ctx context.Context, id string) error {
	pipe := q.c.TxPipeline()
	pipe.Del(ctx, q.keys.retryRec(id))
	pipe.ZRem(ctx, q.keys.retryDue(), id)
	_, err := pipe.Exec(ctx)
	return wrapErr("removing revocation", err)
}

// Pending implements broker.RevocationQueue.
func (q *RedisQueue) Pending(ctx context.Context) (int, error) {
	n, err := q.c.ZCard(ctx, q.keys.retryDue()).Result()
	return int(n), wrapErr("counting pending revocations", err)
}

// validatePending checks what both queues need to keep an entry.
func validatePending(c broker.Credential, attempt int) error {
	switch {
	case c.ID == "":
		return errors.New("queueing revocation: credential id is empty")
	case c.ExpiresAt.IsZero():
		return fmt.Errorf("queueing revocation of %s: credential has no expiry", c.ID)
	case attempt < 1:
		return fmt.Errorf("queueing revocation of %s: attempt %d must be 1 or more", c.ID, attempt)
	}
	return nil
}

func fromCredRecord(r credRecord) broker.Credential {
	return broker.Credential{
		ID: r.ID, Kind: broker.CredentialKind(r.Kind), TaskID: r.TaskID, Parent: r.Parent,
		IssuedAt: fromMs(r.IssuedAt), ExpiresAt: fromMs(r.ExpiresAt),
	}
}
