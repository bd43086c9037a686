// Package replwait runs a Redis write so that it is answered only once it
// reached replicas: the write and a WAIT for them go to the primary on one
// connection, in one round trip.
package replwait

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotReplicated: the write landed on the primary but no (or too few)
// replicas acknowledged it within the timeout. A caller that must not lose
// the write to a failover treats it as not done and fails closed.
var ErrNotReplicated = errors.New("the write did not reach a replica in time")

// Waiter waits for Replicas replicas after each write, at most Timeout.
// It is safe for concurrent use.
type Waiter struct {
	replicas int
	timeout  time.Duration
}

// New returns a Waiter for replicas (≥ 1) replicas and a timeout (> 0).
// WAIT is read within the client's read timeout: the client must be built
// with a read timeout above timeout (revocation.NewModeClient does this).
func New(replicas int, timeout time.Duration) (*Waiter, error) {
	if replicas < 1 {
		return nil, fmt.Errorf("replwait: replicas %d must be at least 1", replicas)
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("replwait: timeout %v must be positive", timeout)
	}
	return &Waiter{replicas: replicas, timeout: timeout}, nil
}

// Timeout is how long one write waits for its replicas.
func (w *Waiter) Timeout() time.Duration { return w.timeout }

// Run runs script with keys and args on the primary that serves keys[0]
// (in a Redis Cluster the primary of its slot; every key must share it),
// then WAIT on the same connection. It returns the script's reply; if the
// script failed, its error; if it succeeded but fewer than the wanted
// replicas acknowledged it, an error wrapping ErrNotReplicated.
func (w *Waiter) Run(ctx context.Context, c redis.UniversalClient, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	var node redis.UniversalClient = c
	if cc, ok := c.(*redis.ClusterClient); ok {
		if len(keys) == 0 {
			return failed(ctx, errors.New("replwait: a cluster write needs a key to find its primary"))
		}
		m, err := cc.MasterForKey(ctx, keys[0])
		if err != nil {
			return failed(ctx, fmt.Errorf("finding the primary of %s: %w", keys[0], err))
		}
		node = m
	}
	res, acked := w.run(ctx, node, script, keys, args, false)
	if redis.HasErrorPrefix(res.Err(), "NOSCRIPT") {
		res, acked = w.run(ctx, node, script, keys, args, true)
	}
	if res.Err() != nil {
		if cc, ok := c.(*redis.ClusterClient); ok {
			cc.ReloadState(ctx) // a failover may have moved the slot: the next write finds its new primary
		}
		return res
	}
	if err := acked.Err(); err != nil {
		return failed(ctx, fmt.Errorf("waiting for %d replica(s): %w: %w", w.replicas, ErrNotReplicated, err))
	}
	if n := acked.Val(); n < int64(w.replicas) {
		return failed(ctx, fmt.Errorf("%w: %d of %d replica(s) acknowledged within %v", ErrNotReplicated, n, w.replicas, w.timeout))
	}
	return res
}

// run sends the script (by its SHA, or whole when full) and WAIT in one
// pipeline, so both go on one connection.
func (w *Waiter) run(ctx context.Context, node redis.UniversalClient, script *redis.Script, keys []string, args []any, full bool) (*redis.Cmd, *redis.IntCmd) {
	var res *redis.Cmd
	var acked *redis.IntCmd
	_, _ = node.Pipelined(ctx, func(p redis.Pipeliner) error {
		if full {
			res = script.Eval(ctx, p, keys, args...)
		} else {
			res = script.EvalSha(ctx, p, keys, args...)
		}
		// Pipeliner has no Wait; the pipeline reads it within the client's
		// read timeout (see New).
		acked = redis.NewIntCmd(ctx, "wait", w.replicas, w.timeout.Milliseconds())
		return p.Process(ctx, acked)
	})
	return res, acked
}

func failed(ctx context.Context, err error) *redis.Cmd {
	cmd := redis.NewCmd(ctx)
	cmd.SetErr(err)
	return cmd
}
