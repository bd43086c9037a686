package ssf

import (
	"context"
	"time"
)

// Stream is one SSF event stream as Valet keeps it (SSF 1.0 section 8.1.1).
type Stream struct {
	ID              string   `json:"stream_id"`
	Audience        []string `json:"aud"`
	EventsRequested []string `json:"events_requested"`
	EventsDelivered []string `json:"events_delivered"`
	Method          string   `json:"method"`
	// EndpointURL is the receiver's push endpoint (push) or Valet's poll
	// endpoint for the stream (poll).
	EndpointURL string `json:"endpoint_url"`
	// AuthorizationHeader is what a push carries in its Authorization
	// header; a secret of the receiver's, never echoed.
	AuthorizationHeader string `json:"authorization_header,omitempty"`
	Description         string `json:"description,omitempty"`
	// Status is enabled, paused (events are held) or disabled (events are
	// not kept); Reason is why it was last set.
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`
	// Excluded are the subjects removed from the stream (canonical JSON):
	// Valet's default_subjects is ALL, so a removed subject is an
	// exclusion and adding it back lifts it.
	Excluded   []string  `json:"excluded,omitempty"`
	CreatedBy  string    `json:"created_by"`
	CreatedAt  time.Time `json:"created_at"`
	VerifiedAt time.Time `json:"verified_at,omitzero"`
}

// Stream statuses (SSF 1.0 section 8.1.2).
const (
	StatusEnabled  = "enabled"
	StatusPaused   = "paused"
	StatusDisabled = "disabled"
)

// Queued is one signed SET waiting in a stream's queue.
type Queued struct {
	JTI      string    `json:"jti"`
	SET      string    `json:"set"`
	Attempts int       `json:"attempts"`
	NextAt   time.Time `json:"next_at,omitzero"`
}

// Store keeps the streams, their bounded queues of SETs, the feed cursor
// the transmitter resumes from, and the transmitter's lease.
// Implementations (revocation.RedisSSFStore, revocation.MemorySSFStore)
// must be safe for concurrent use by several brokers; errors wrap
// broker.ErrNotFound for an unknown stream and broker.ErrUnavailable when
// the store cannot be reached.
type Store interface {
	// PutStream creates or replaces a stream.
	PutStream(ctx context.Context, s Stream) error
	// Stream returns one stream.
	Stream(ctx context.Context, id string) (Stream, error)
	// Streams lists every stream, in no particular order.
	Streams(ctx context.Context) ([]Stream, error)
	// DeleteStream removes a stream and its queue, and reports whether
	// there was one.
	DeleteStream(ctx context.Context, id string) (bool, error)
	// Enqueue appends q to the stream's queue unless it already holds max
	// SETs (false) or one with q's jti (true, nothing changed).
	Enqueue(ctx context.Context, streamID string, q Queued, max int) (bool, error)
	// Pending returns up to limit queued SETs, oldest first.
	Pending(ctx context.Context, streamID string, limit int) ([]Queued, error)
	// Ack removes the SETs with the given jtis and reports how many it
	// removed; unknown jtis are ignored.
	Ack(ctx context.Context, streamID string, jtis []string) (int, error)
	// Retry saves a queued SET's attempts and next attempt time, keeping
	// its place; a SET no longer queued is left alone.
	Retry(ctx context.Context, streamID string, q Queued) error
	// Cursor and SetCursor keep where in the revocation feed the
	// transmitter resumes ("" when it never ran).
	Cursor(ctx context.Context) (string, error)
	SetCursor(ctx context.Context, cursor string) error
	// Lease takes or renews the right to transmit for ttl; false means
	// another broker holds it.
	Lease(ctx context.Context, owner string, ttl time.Duration) (bool, error)
}
