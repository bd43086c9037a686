package broker

import (
	"context"
	"time"
)

// Limiter keeps the small shared facts that make agent controls hold across
// broker replicas: one-time use (DPoP proof jtis, action tokens) and
// per-task counters (budgets). Implementations must be safe for concurrent
// use by several brokers at once. Errors wrap ErrUnavailable when the store
// cannot be reached; callers then refuse (fail closed).
type Limiter interface {
	// Once records key until the given time and reports whether this call
	// was the first to do so. Of concurrent calls with one key exactly one
	// gets true.
	Once(ctx context.Context, key string, until time.Time) (bool, error)
	// Count adds one to the counter key, which lives until the given time,
	// and returns its new value.
	Count(ctx context.Context, key string, until time.Time) (int64, error)
}
