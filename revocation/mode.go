package revocation

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/internal/redisslot"
)

// The deployments of Redis NewModeClient connects to.
const (
	// ModeSingle is one Redis primary at a redis:// URL.
	ModeSingle = "single"
	// ModeSentinel is a primary found through Redis Sentinel; a failover
	// moves the client to the promoted replica.
	ModeSentinel = "sentinel"
	// ModeCluster is a Redis (or Valkey) Cluster. Every key Valet writes
	// carries the prefix's hash tag, so all of them live in ONE slot: the
	// scripts stay atomic, but Valet's writes do not scale out across
	// shards (see CheckClusterPrefix).
	ModeCluster = "cluster"
)

// DefaultClusterPrefix is the key prefix in ModeCluster when none is set.
const DefaultClusterPrefix = redisslot.DefaultPrefix

// ModeOptions say how to reach Redis.
type ModeOptions struct {
	// Mode is ModeSingle (default), ModeSentinel or ModeCluster.
	Mode string
	// URL is the redis:// or rediss:// URL of ModeSingle.
	URL string
	// Addrs are host:port of the sentinels (ModeSentinel) or of some
	// cluster nodes to start from (ModeCluster).
	Addrs []string
	// MasterName is the name the sentinels monitor the primary under.
	MasterName string
	// Username and Password authenticate to the data nodes (ModeSentinel,
	// ModeCluster; in ModeSingle they come from URL). SentinelPassword
	// authenticates to the sentinels.
	Username, Password, SentinelPassword string
	// TLS dials the data nodes with TLS (ModeSentinel, ModeCluster).
	TLS bool
	// PoolSize caps the connections per node; 0 keeps go-redis's default.
	PoolSize int
	// MinReadTimeout raises the read timeout to at least this: a durable
	// write waits for its replicas (replwait) within the read timeout.
	MinReadTimeout time.Duration
}

// Validate reports every problem of o at once; field names are those of the
// `redis` section of the config file.
func (o ModeOptions) Validate() error {
	var errs []error
	switch o.Mode {
	case "", ModeSingle:
		if len(o.Addrs) > 0 || o.MasterName != "" {
			errs = append(errs, errors.New("redis.addrs and redis.master_name are for mode sentinel or cluster; mode single uses redis.url"))
		}
	case ModeSentinel, ModeCluster:
		if len(o.Addrs) == 0 {
			errs = append(errs, fmt.Errorf("redis.addrs: mode %s needs at least one host:port", o.Mode))
		}
		for i, a := range o.Addrs {
			if _, port, err := net.SplitHostPort(a); err != nil || port == "" {
				errs = append(errs, fmt.Errorf("redis.addrs[%d]: %q is not host:port", i, a))
			}
		}
		if o.Mode == ModeSentinel && o.MasterName == "" {
			errs = append(errs, errors.New("redis.master_name: mode sentinel needs the name the sentinels monitor the primary under"))
		}
		if o.Mode == ModeCluster && o.MasterName != "" {
			errs = append(errs, errors.New("redis.master_name is for mode sentinel only"))
		}
	default:
		errs = append(errs, fmt.Errorf("redis.mode: %q is not one of single, sentinel, cluster", o.Mode))
	}
	return errors.Join(errs...)
}

// NewModeClient connects to Redis as o says, with the timeouts of
// NewClient (500 ms to dial, read and write, 1 s for a pooled connection,
// one retry), so a dead Redis answers within about a second.
func NewModeClient(o ModeOptions) (redis.UniversalClient, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if o.Mode == "" || o.Mode == ModeSingle {
		opt, err := clientOptions(o.URL)
		if err != nil {
			return nil, err
		}
		opt.ReadTimeout = max(opt.ReadTimeout, o.MinReadTimeout)
		if o.PoolSize > 0 {
			opt.PoolSize = o.PoolSize
			opt.MaxIdleConns, opt.MaxActiveConns = o.PoolSize, o.PoolSize
		}
		return redis.NewClient(opt), nil
	}
	u := &redis.UniversalOptions{
		Addrs: o.Addrs, MasterName: o.MasterName, Username: o.Username, Password: o.Password,
		SentinelPassword: o.SentinelPassword, PoolSize: o.PoolSize,
		DialTimeout: 500 * time.Millisecond, ReadTimeout: max(500*time.Millisecond, o.MinReadTimeout),
		WriteTimeout: 500 * time.Millisecond, PoolTimeout: time.Second, MaxRetries: 1,
		ContextTimeoutEnabled: true,
		// As NewClient: one dial per try (go-redis dials 5 times, 100 ms
		// apart, by default: a dead primary would hold each request half a
		// second per try), and pipelines on the main pool.
		DialerRetries: 1, PipelinePoolSize: -1,
	}
	if o.TLS {
		u.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if o.Mode == ModeCluster {
		// One retry and a few redirects: a moved slot is followed, a dead
		// node answers 503 instead of hanging the request.
		u.MaxRedirects = 3
		return redis.NewClusterClient(u.Cluster()), nil
	}
	return redis.NewFailoverClient(u.Failover()), nil
}

// CheckClusterPrefix reports whether every key under prefix hashes to one
// Redis Cluster slot (redisslot.CheckPrefix). Valet's scripts touch
// several keys each, so in a cluster they all must share a slot; the price
// is that one slot, one primary, takes every write.
func CheckClusterPrefix(prefix string) error { return redisslot.CheckPrefix(prefix) }

// checkClientPrefix rejects a cluster client with a prefix whose keys
// would spread over several slots.
func checkClientPrefix(c redis.UniversalClient, prefix string) error {
	return redisslot.CheckClient(c, prefix)
}

// scanNode is the client a SCAN of the keys under prefix goes to: in a
// cluster, the primary of the prefix's slot (every key is there).
func scanNode(ctx context.Context, c redis.UniversalClient, prefix string) (redis.UniversalClient, error) {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return c, nil
	}
	m, err := cc.MasterForKey(ctx, prefix)
	if err != nil {
		return nil, wrapErr("finding the primary of "+prefix, err)
	}
	return m, nil
}
