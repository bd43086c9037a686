package revocation

import (
	"github.com/redis/go-redis/v9"
)

// FeedPoolSize is the connection pool of a FeedClient: the fan-out's one
// live reader (a blocking XREAD), its bounded catch-up and snapshot readers
// (fanout.Limits.Readers, default 4), and one spare.
func FeedPoolSize(readers int) int { return readers + 2 }

// NewFeedClient returns a client for the revocation feed alone, to the same
// Redis as c and with c's options but a pool of its own of
// FeedPoolSize(readers) connections: feed followers then never take a
// connection that declarations, introspection or the reaper need. Close it
// when done.
func NewFeedClient(c *redis.Client, readers int) *redis.Client {
	opt := *c.Options()
	// The copy must not share what c's construction filled in: go-redis
	// registers handlers on them (and refuses a second registration).
	if m := opt.MaintNotificationsConfig; m != nil {
		mc := *m
		opt.MaintNotificationsConfig = &mc
	}
	opt.PushNotificationProcessor = nil
	opt.PoolSize = FeedPoolSize(readers)
	opt.MinIdleConns, opt.MaxIdleConns, opt.MaxActiveConns = 0, opt.PoolSize, opt.PoolSize
	return redis.NewClient(&opt)
}

// NewFeed returns the revocation feed under prefix (default "valet") read
// through c, which should be a NewFeedClient.
func NewFeed(c redis.UniversalClient, prefix string) *RedisFeed {
	if prefix == "" {
		prefix = "valet"
	}
	return &RedisFeed{c: c, keys: keys{prefix: prefix}}
}
