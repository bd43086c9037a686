// Package redisslot decides whether every key under a prefix hashes to one
// Redis Cluster slot, as Valet's multi-key scripts need.
package redisslot

import (
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// DefaultPrefix is the key prefix in a cluster when none is set.
const DefaultPrefix = "{valet}"

// CheckPrefix reports whether every key under prefix hashes to one slot:
// the prefix must hold a hash tag, a non-empty "{...}" after its first "{"
// (Redis hashes only the tag of such a key). The price of one slot is that
// one primary takes every write.
func CheckPrefix(prefix string) error {
	open := strings.IndexByte(prefix, '{')
	if open < 0 {
		return fmt.Errorf("redis.prefix %q has no hash tag: in mode cluster it must hold one, like %q, so every key of a script is in one slot", prefix, DefaultPrefix)
	}
	if end := strings.IndexByte(prefix[open+1:], '}'); end <= 0 {
		return fmt.Errorf("redis.prefix %q: its first \"{\" must be closed within the prefix with a non-empty tag, like %q, so every key of a script is in one slot", prefix, DefaultPrefix)
	}
	return nil
}

// CheckClient is CheckPrefix when c is a cluster client, and nil for any
// other client.
func CheckClient(c redis.UniversalClient, prefix string) error {
	if _, ok := c.(*redis.ClusterClient); !ok {
		return nil
	}
	return CheckPrefix(prefix)
}
