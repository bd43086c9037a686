package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/internal/replwait"
	"github.com/valet-dev/valet/revocation"
)

// The values of redis.durability.
const (
	// durabilityPrimary answers once the primary took a write.
	durabilityPrimary = "primary"
	// durabilityReplica answers a declaration only once its ledger write
	// and its audit write reached at least one replica (WAIT 1).
	durabilityReplica = "replica"
)

// defaultReplicaTimeout is how long a durable write waits for a replica
// when redis.replica_timeout is not set.
const defaultReplicaTimeout = 250 * time.Millisecond

// maxReplicaTimeout bounds redis.replica_timeout: every durable request
// may wait this long, holding a connection of the pool.
const maxReplicaTimeout = 5 * time.Second

func (r *RedisConfig) single() bool { return r.Mode == "" || r.Mode == revocation.ModeSingle }

func (r *RedisConfig) defaults() {
	if r.Mode == revocation.ModeCluster && r.Prefix == "" {
		r.Prefix = revocation.DefaultClusterPrefix
	}
	if r.Durability == "" {
		r.Durability = durabilityPrimary
	}
	if r.ReplicaTimeout == 0 {
		r.ReplicaTimeout = Duration(defaultReplicaTimeout)
	}
}

// validate reports every problem of the redis section beyond redis.url.
func (r *RedisConfig) validate() []error {
	var errs []error
	if err := r.modeOptions(func(string) string { return "" }).Validate(); err != nil {
		errs = append(errs, err)
	}
	if r.Mode == revocation.ModeCluster {
		if err := revocation.CheckClusterPrefix(r.Prefix); err != nil {
			errs = append(errs, err)
		}
	}
	if r.Username != "" && r.PasswordEnv == "" {
		errs = append(errs, errors.New("redis.username: set redis.password_env too (the name of the variable holding the password)"))
	}
	switch r.Durability {
	case durabilityPrimary, durabilityReplica:
	default:
		errs = append(errs, fmt.Errorf("redis.durability: %q must be primary or replica", r.Durability))
	}
	if t := time.Duration(r.ReplicaTimeout); t <= 0 || t > maxReplicaTimeout {
		errs = append(errs, fmt.Errorf("redis.replica_timeout: %v must be more than 0 and at most %v", t, maxReplicaTimeout))
	}
	return errs
}

// modeOptions are the client options of the redis section; passwords are
// read from the variables it names.
func (r *RedisConfig) modeOptions(getenv func(string) string) revocation.ModeOptions {
	o := revocation.ModeOptions{Mode: r.Mode, URL: r.URL, Addrs: r.Addrs, MasterName: r.MasterName, Username: r.Username, TLS: r.TLS}
	if r.PasswordEnv != "" {
		o.Password = getenv(r.PasswordEnv)
	}
	if r.SentinelPasswordEnv != "" {
		o.SentinelPassword = getenv(r.SentinelPasswordEnv)
	}
	if r.Durability == durabilityReplica {
		// WAIT is read within the read timeout: leave it room.
		o.MinReadTimeout = time.Duration(r.ReplicaTimeout) + 500*time.Millisecond
	}
	return o
}

// waiter is the replica wait of redis.durability replica; nil for primary.
func (r *RedisConfig) waiter() (*replwait.Waiter, error) {
	if r.Durability != durabilityReplica {
		return nil, nil
	}
	w, err := replwait.New(1, time.Duration(r.ReplicaTimeout))
	if err != nil {
		return nil, fmt.Errorf("redis.replica_timeout: %w", err)
	}
	return w, nil
}

// feedClient is the revocation feed's own client (see
// revocation.NewFeedClient): the same Redis, a pool of its own.
func (r *RedisConfig) feedClient(main redis.UniversalClient, getenv func(string) string, readers int) (redis.UniversalClient, error) {
	if c, ok := main.(*redis.Client); ok && r.single() {
		return revocation.NewFeedClient(c, readers), nil
	}
	o := r.modeOptions(getenv)
	o.PoolSize = revocation.FeedPoolSize(readers)
	c, err := revocation.NewModeClient(o)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	return c, nil
}
