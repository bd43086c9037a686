package revocation

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/oauth"
)

// OAuth keys (with the default prefix):
//
//	valet:oauth:<key>   string: one record of the interactive flow (PXAT: its expiry)
//
// The oauth package builds <key> from a kind and a hash (pending
// authorizations, consent requests, codes, consents, refresh tokens).

// RedisOAuthStore is oauth.Store in Redis, shared by every broker. Each
// operation is one command (SET NX PXAT, GET, GETDEL, SET XX KEEPTTL GET),
// so each is atomic. Safe for concurrent use.
type RedisOAuthStore struct {
	c      redis.UniversalClient
	prefix string
}

var _ oauth.Store = (*RedisOAuthStore)(nil)

// NewRedisOAuthStore returns the store under prefix (default "valet").
func NewRedisOAuthStore(c redis.UniversalClient, prefix string) (*RedisOAuthStore, error) {
	if c == nil {
		return nil, errors.New("revocation: redis client cannot be nil")
	}
	if prefix == "" {
		prefix = "valet"
	}
	return &RedisOAuthStore{c: c, prefix: prefix}, nil
}

func (s *RedisOAuthStore) key(k string) string { return s.prefix + ":oauth:" + part(k) }

// Put implements oauth.Store.
func (s *RedisOAuthStore) Put(ctx context.Context, key string, value []byte, until time.Time) (bool, error) {
	if until.IsZero() {
		return false, errors.New("oauth store: no expiry")
	}
	_, err := s.c.SetArgs(ctx, s.key(key), value, redis.SetArgs{Mode: "NX", ExpireAt: until}).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, wrapErr("writing an oauth record", err)
	}
	return true, nil
}

// Get implements oauth.Store.
func (s *RedisOAuthStore) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := s.c.Get(ctx, s.key(key)).Bytes()
	return oauthValue(v, err, "reading an oauth record")
}

// Take implements oauth.Store.
func (s *RedisOAuthStore) Take(ctx context.Context, key string) ([]byte, error) {
	v, err := s.c.GetDel(ctx, s.key(key)).Bytes()
	return oauthValue(v, err, "taking an oauth record")
}

// Swap implements oauth.Store.
func (s *RedisOAuthStore) Swap(ctx context.Context, key string, value []byte) ([]byte, error) {
	v, err := s.c.SetArgs(ctx, s.key(key), value, redis.SetArgs{Mode: "XX", KeepTTL: true, Get: true}).Bytes()
	return oauthValue(v, err, "swapping an oauth record")
}

func oauthValue(v []byte, err error, what string) ([]byte, error) {
	switch {
	case errors.Is(err, redis.Nil):
		return nil, broker.ErrNotFound
	case err != nil:
		return nil, wrapErr(what, err)
	}
	return v, nil
}
