package console

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
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

// pending is a sign-in under way: what the callback must check. It is
// kept in the browser's sign-in cookie, sealed (AES-256-GCM under a key
// made at start), not on the server: anyone may start a sign-in, so
// server-side state for them could be filled by a flood and push out a
// responder's sign-in in the middle of an incident.
type pending struct {
	Login   identity.LoginState `json:"login"`
	Expires time.Time           `json:"expires"`
}

// maxSessions bounds the memory of the session store: when it is full,
// expired sessions are swept and then the one closest to expiry gives way.
// Sessions exist only for admins the role rules admitted.
const (
	maxSessions = 10000
	pendingTTL  = 10 * time.Minute
)

// signinAAD binds a sealed sign-in to its purpose.
var signinAAD = []byte("valet console sign-in v1")

// sessions is the in-memory session store of one broker: a console behind
// several replicas needs sticky sessions (docs/incident-response.md). Keys
// are SHA-256 hashes of the cookie values, so a map dump holds no cookie.
// It is safe for concurrent use.
type sessions struct {
	mu   sync.Mutex
	live map[string]*session
	seal cipher.AEAD // seals pending sign-ins into their cookie
	now  func() time.Time
}

func newSessions(now func() time.Time) *sessions {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("console: reading random bytes: " + err.Error())
	}
	block, _ := aes.NewCipher(k) // a 32-byte key never fails
	aead, _ := cipher.NewGCM(block)
	return &sessions{live: map[string]*session{}, seal: aead, now: now}
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

// start seals a new sign-in into the value of its cookie.
func (s *sessions) start(p pending) string {
	p.Expires = s.now().Add(pendingTTL)
	plain, _ := json.Marshal(p) // strings and a time
	nonce := make([]byte, s.seal.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		panic("console: reading random bytes: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(s.seal.Seal(nonce, nonce, plain, signinAAD))
}

// finish opens the sign-in sealed in a cookie value: ok is false when it
// was not sealed by this process, was changed, or expired. A sealed
// sign-in can be presented again, but the provider's code it is finished
// with works once. (identity.Login.Finish checks the state.)
func (s *sessions) finish(id string) (pending, bool) {
	raw, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil || len(raw) < s.seal.NonceSize()+s.seal.Overhead() || len(raw) > 4096 {
		return pending{}, false
	}
	n := s.seal.NonceSize()
	plain, err := s.seal.Open(nil, raw[:n], raw[n:], signinAAD)
	if err != nil {
		return pending{}, false
	}
	var p pending
	if json.Unmarshal(plain, &p) != nil || !s.now().Before(p.Expires) {
		return pending{}, false
	}
	return p, true
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
