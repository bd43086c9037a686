package redistest

import (
	"context"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// TripCounter is a go-redis hook that records each round trip to Redis:
// a command sent alone by its name, a pipeline as "pipeline(names...)".
// It is safe for concurrent use.
type TripCounter struct {
	mu    sync.Mutex
	trips []string
}

// DialHook implements redis.Hook.
func (h *TripCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook implements redis.Hook.
func (h *TripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.add(cmd.Name())
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook implements redis.Hook.
func (h *TripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		names := make([]string, len(cmds))
		for i, c := range cmds {
			names[i] = c.Name()
		}
		h.add("pipeline(" + strings.Join(names, " ") + ")")
		return next(ctx, cmds)
	}
}

func (h *TripCounter) add(s string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.trips = append(h.trips, s)
}

// Take returns and forgets the round trips seen so far.
func (h *TripCounter) Take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.trips
	h.trips = nil
	return t
}
