package oauth

import (
	"context"
	"time"
)

// Store keeps the interactive flow's short-lived records: a pending
// authorization while the person signs in upstream, the consent page's
// request, the one-time authorization codes, the consents given (one per
// person, client and template) and the refresh tokens. Keys are opaque
// strings the oauth package builds (hashes of secrets, never the secrets);
// values are its JSON. revocation has the Redis and in-memory stores and
// their conformance suite (conformance.OAuthStore). Implementations must be
// safe for concurrent use.
type Store interface {
	// Put records value under key until the given time, unless the key is
	// there already: it reports whether it wrote.
	Put(ctx context.Context, key string, value []byte, until time.Time) (bool, error)
	// Get reads a key; broker.ErrNotFound when it is absent or expired.
	Get(ctx context.Context, key string) ([]byte, error)
	// Take reads and deletes a key in one step: of concurrent calls for one
	// key exactly one gets the value, the others broker.ErrNotFound.
	Take(ctx context.Context, key string) ([]byte, error)
	// Swap replaces the value of a key that is there, keeping its expiry,
	// and answers the value it had, in one step: of concurrent calls for
	// one key each sees the value the one before it left.
	// broker.ErrNotFound when it is absent or expired (nothing is written).
	Swap(ctx context.Context, key string, value []byte) ([]byte, error)
}
