package broker

import (
	"context"
	"errors"
	"time"
)

// ErrExists: a record with that id is already stored.
var ErrExists = errors.New("already exists")

// Records keeps the small records of agent controls that are neither tasks
// nor credentials: issued action tokens, approvals and tool-call events.
// Records are opaque bytes (JSON) to the store, filed by kind and id, and
// every one expires by itself at the time it is given. Implementations
// must be safe for concurrent use by several brokers at once. Errors wrap
// ErrNotFound, ErrExists, ErrNotActive (a Swap whose old value no longer
// matches) or ErrUnavailable.
type Records interface {
	// Put stores a new record until the given time; ErrExists if the id is
	// taken.
	Put(ctx context.Context, kind, id string, rec []byte, until time.Time) error
	// Get returns a live record; ErrNotFound if there is none.
	Get(ctx context.Context, kind, id string) ([]byte, error)
	// Swap replaces the record with next if it still holds exactly old,
	// keeping its expiry. Of concurrent swaps from one old value exactly
	// one succeeds; the others get ErrNotActive.
	Swap(ctx context.Context, kind, id string, old, next []byte) error
	// List returns up to limit live records of kind, in no set order.
	List(ctx context.Context, kind string, limit int) ([][]byte, error)
	// Append adds rec to the end of the list kind/id, which lives at least
	// until the given time; a list holding max items already refuses it
	// with ErrExists.
	Append(ctx context.Context, kind, id string, rec []byte, until time.Time, max int) error
	// Items returns up to limit items of the list kind/id, oldest first.
	Items(ctx context.Context, kind, id string, limit int) ([][]byte, error)
	// Hold adds member to the set kind/id until the given time, unless the
	// set already holds max live members (a member whose time has passed no
	// longer counts): then nothing changes and ErrExists comes back. Holding
	// a member already held renews it. Of concurrent holds on a set with one
	// free place, exactly one succeeds. It is a counting semaphore whose
	// places free themselves if never released.
	Hold(ctx context.Context, kind, id, member string, until time.Time, max int) error
	// Release removes member from the set kind/id; a member not held is not
	// an error.
	Release(ctx context.Context, kind, id, member string) error
}
