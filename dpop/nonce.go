package dpop

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"time"
)

// NonceHeader is the response header that hands out a server nonce
// (RFC 9449 section 8).
const NonceHeader = "DPoP-Nonce"

// Nonces issues and checks server-provided DPoP nonces (RFC 9449 section
// 8) without storing any: a nonce is the number of a time window and an
// HMAC of it under a key made at start, valid in its window and the next,
// so a proof made with a nonce from up to two windows ago fails and the
// client must fetch a fresh one. Replicas that should accept each other's
// nonces share a key (NewNoncesWithKey); replicas with their own keys cost
// a client one extra round trip when it changes replica.
type Nonces struct {
	key    []byte
	window time.Duration
	now    func() time.Time
}

// DefaultNonceWindow is how long one nonce window lasts.
const DefaultNonceWindow = 5 * time.Minute

// NewNonces makes a random key. A zero window is DefaultNonceWindow; a nil
// now is time.Now.
func NewNonces(window time.Duration, now func() time.Time) *Nonces {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	return NewNoncesWithKey(key, window, now)
}

// NewNoncesWithKey uses key (at least 32 random bytes, shared by replicas).
func NewNoncesWithKey(key []byte, window time.Duration, now func() time.Time) *Nonces {
	if window <= 0 {
		window = DefaultNonceWindow
	}
	if now == nil {
		now = time.Now
	}
	return &Nonces{key: append([]byte(nil), key...), window: window, now: now}
}

func (n *Nonces) mac(slot uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], slot)
	m := hmac.New(sha256.New, n.key)
	m.Write(b[:])
	return append(b[:], m.Sum(nil)[:16]...)
}

func (n *Nonces) slot() uint64 { return uint64(n.now().UnixNano() / int64(n.window)) }

// Issue is the nonce of the current window.
func (n *Nonces) Issue() string { return base64.RawURLEncoding.EncodeToString(n.mac(n.slot())) }

// Valid reports whether nonce was issued in this window or the one before.
func (n *Nonces) Valid(nonce string) bool {
	b, err := base64.RawURLEncoding.DecodeString(nonce)
	if err != nil || len(b) != 24 {
		return false
	}
	slot, now := binary.BigEndian.Uint64(b[:8]), n.slot()
	if slot != now && slot+1 != now {
		return false
	}
	return hmac.Equal(b, n.mac(slot))
}
