package console

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
)

// session is one signed-in admin. It lives only on the server: the browser
// holds its random id in a cookie and never sees a token.
type session struct {
	principal broker.Principal
	csrf      string
	expires   time.Time
}

// pending is a sign-in under way: what the callback must check.
type pending struct {
	login   identity.LoginState
	expires time.Time
}

// maxSessions and maxPending bound the memory of the stores: when one is
// full, expired entries are swept and then the entry closest to expiry
// gives way.
const (
	maxSessions = 10000
	maxPending  = 10000
	pendingTTL  = 10 * time.Minute
)

// sessions is the in-memory session store of one broker: a console behind
// several replicas needs sticky sessions (docs/incident-response.md). Keys
// are SHA-256 hashes of the cookie values, so a map dump holds no cookie.
// It is safe for concurrent use.
type sessions struct {
	mu      sync.Mutex
	live    map[string]*session
	pending map[string]*pending
	now     func() time.Time
}

func newSessions(now func() time.Time) *sessions {
	return &sessions{live: map[string]*session{}, pending: map[string]*pending{}, now: now}
}

// randomToken is 32 random bytes, base64url.
func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic("console: reading random bytes: " + err.Error()) // crypto/rand does not fail on supported systems
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func key(id string) string {
	h := sha256.Sum256([]byte(id))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// start records a new sign-in and returns the id of its cookie.
func (s *sessions) start(p pending) string {
	id := randomToken()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if len(s.pending) >= maxPending {
		s.sweepLocked(now)
		evictOldest(s.pending, maxPending, func(p *pending) time.Time { return p.expires })
	}
	p.expires = now.Add(pendingTTL)
	s.pending[key(id)] = &p
	return id
}

// finish takes the sign-in of cookie id (once): ok is false when there is
// none or it expired. (identity.Login.Finish checks the state.)
func (s *sessions) finish(id string) (pending, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := key(id)
	p, ok := s.pending[k]
	if !ok {
		return pending{}, false
	}
	delete(s.pending, k)
	if !s.now().Before(p.expires) {
		return pending{}, false
	}
	return *p, true
}

// create opens a session for p until expires and returns its cookie id.
func (s *sessions) create(p broker.Principal, expires time.Time) string {
	id := randomToken()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.live) >= maxSessions {
		s.sweepLocked(s.now())
		evictOldest(s.live, maxSessions, func(x *session) time.Time { return x.expires })
	}
	s.live[key(id)] = &session{principal: p, csrf: randomToken(), expires: expires}
	return id
}

// get returns the live session of cookie id.
func (s *sessions) get(id string) (session, bool) {
	if id == "" {
		return session{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	x, ok := s.live[key(id)]
	if !ok {
		return session{}, false
	}
	if !s.now().Before(x.expires) {
		delete(s.live, key(id))
		return session{}, false
	}
	return *x, true
}

func (s *sessions) end(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, key(id))
}

func (s *sessions) sweepLocked(now time.Time) {
	for k, x := range s.live {
		if !now.Before(x.expires) {
			delete(s.live, k)
		}
	}
	for k, p := range s.pending {
		if !now.Before(p.expires) {
			delete(s.pending, k)
		}
	}
}

// evictOldest makes room for one more entry in m.
func evictOldest[T any](m map[string]*T, limit int, exp func(*T) time.Time) {
	for len(m) >= limit {
		var oldest string
		var at time.Time
		for k, v := range m {
			if oldest == "" || exp(v).Before(at) {
				oldest, at = k, exp(v)
			}
		}
		delete(m, oldest)
	}
}
