package identity

import (
	"crypto/sha256"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valet-dev/valet/broker"
)

// DefaultCacheSize is how many verified identity tokens a Verifier
// remembers unless Options.CacheSize says otherwise.
const DefaultCacheSize = 10000

// tokenCache remembers identity tokens that verified, keyed by the SHA-256
// of the whole token, so an agent presenting one workload token for many
// tasks pays for one signature check. An entry is used only while the token
// would still verify on the clock (until exp plus the leeway, the same bound
// the full check applies) and while its issuer's keys are the ones that
// verified it: a key refresh (rotation) bumps the issuer's generation and
// every entry of the old one is checked again from scratch. Purge forgets
// everything. Failures are never cached.
type tokenCache struct {
	mu  sync.Mutex
	max int
	m   map[[32]byte]cachedToken

	hits, misses atomic.Uint64 // lookups answered from the cache, and not
}

type cachedToken struct {
	p     broker.Principal
	ti    *trustedIssuer
	gen   uint64
	until time.Time
}

func newTokenCache(size int) *tokenCache {
	if size < 0 {
		return nil
	}
	if size == 0 {
		size = DefaultCacheSize
	}
	return &tokenCache{max: size, m: make(map[[32]byte]cachedToken)}
}

// get answers the principal of a token verified before, if it may still be
// used at now.
func (c *tokenCache) get(key [32]byte, now time.Time) (broker.Principal, bool) {
	if c == nil {
		return broker.Principal{}, false
	}
	c.mu.Lock()
	e, ok := c.m[key]
	if ok && (!now.Before(e.until) || e.gen != e.ti.keys.generation()) {
		delete(c.m, key)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		c.misses.Add(1)
		return broker.Principal{}, false
	}
	c.hits.Add(1)
	p := e.p
	p.Claims = maps.Clone(e.p.Claims) // callers may annotate their copy
	return p, true
}

// put remembers a verified token. When full it drops the expired entries,
// then, if still full, an arbitrary half (map order is random), so the
// cache stays bounded whatever tokens arrive.
func (c *tokenCache) put(key [32]byte, e cachedToken, now time.Time) {
	if c == nil {
		return
	}
	e.p.Claims = maps.Clone(e.p.Claims)
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for k, v := range c.m {
			if !now.Before(v.until) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < c.max/2 {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[key] = e
}

func (c *tokenCache) purge() {
	if c == nil {
		return
	}
	c.mu.Lock()
	clear(c.m)
	c.mu.Unlock()
}

func (c *tokenCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Purge forgets every cached verification, so the next use of any token
// is checked in full. A distrust needs no purge to take effect: the gate
// refuses a distrusted issuer's principals whether they came from the
// cache or not.
func (v *Verifier) Purge() { v.cache.purge() }

// CacheStats counts the lookups of the verified-token cache since start:
// answered from the cache (hits) and verified in full (misses). Both are 0
// with the cache off.
func (v *Verifier) CacheStats() (hits, misses uint64) {
	if v.cache == nil {
		return 0, 0
	}
	return v.cache.hits.Load(), v.cache.misses.Load()
}

func tokenKey(raw string) [32]byte { return sha256.Sum256([]byte(raw)) }
