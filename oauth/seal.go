package oauth

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// A sign-in under way lives in the person's browser, not in the Store:
// GET AuthorizePath seals the checked request (and Valet's upstream
// state, nonce and PKCE verifier) into the binding cookie, and the
// callback opens it. So anyone may start sign-ins as fast as they like
// without writing a byte to Redis; the Store is written only after the
// upstream provider signed someone in. Every replica must open what any
// replica sealed: the keys come from configuration (valet serve derives
// them from its signing keys), the first seals and all of them open, so a
// rotated key keeps opening the sign-ins it sealed.

// maxSealedCookie bounds the binding cookie: browsers keep cookies of
// about 4 KiB (RFC 6265 section 6.1 asks for at least 4096 bytes with the
// name), so a bigger sign-in is refused before the person is sent away.
const maxSealedCookie = 3800

// loginSealAAD ties a sealed value to its purpose, so nothing else sealed
// under the same key opens as a sign-in.
var loginSealAAD = []byte("valet oauth sign-in v1")

// sealedLogin is what the binding cookie carries.
type sealedLogin struct {
	Request authzRequest `json:"r"`
	// UpState is the SHA-256 of the upstream state the callback must
	// carry: a cookie only finishes the sign-in it started.
	UpState string    `json:"s"`
	Expires time.Time `json:"e"`
}

// loginSealer seals and opens sign-ins; safe for concurrent use.
type loginSealer struct {
	aeads []cipher.AEAD // [0] seals
}

// DeriveLoginSealKey turns secret key material shared by every replica
// (the DER of a signing key, say) into a key that seals sign-ins, so the
// material itself never encrypts anything.
func DeriveLoginSealKey(material []byte) ([]byte, error) {
	return hkdf.Key(sha256.New, material, []byte("valet"), "oauth sign-in seal v1", 32)
}

func newLoginSealer(keys [][]byte) (*loginSealer, error) {
	if len(keys) == 0 {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return nil, fmt.Errorf("oauth: reading random bytes: %w", err)
		}
		keys = [][]byte{k}
	}
	s := &loginSealer{}
	for i, k := range keys {
		if len(k) != 32 {
			return nil, fmt.Errorf("oauth: sign-in seal key %d is %d bytes; it must be 32", i, len(k))
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		s.aeads = append(s.aeads, aead)
	}
	return s, nil
}

var errSignInTooLarge = errors.New("sign-in too large for its cookie")

// seal answers the cookie value of l.
func (s *loginSealer) seal(l sealedLogin) (string, error) {
	plain, err := json.Marshal(l)
	if err != nil {
		return "", err
	}
	a := s.aeads[0]
	nonce := make([]byte, a.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	v := base64.RawURLEncoding.EncodeToString(a.Seal(nonce, nonce, plain, loginSealAAD))
	if len(v) > maxSealedCookie {
		return "", fmt.Errorf("%w: %d bytes sealed, at most %d", errSignInTooLarge, len(v), maxSealedCookie)
	}
	return v, nil
}

// open answers the sign-in sealed in a cookie value, if one of the keys
// sealed it, it is unchanged and it has not expired.
func (s *loginSealer) open(v string, now time.Time) (sealedLogin, bool) {
	if len(v) > maxSealedCookie {
		return sealedLogin{}, false
	}
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		return sealedLogin{}, false
	}
	for _, a := range s.aeads {
		n := a.NonceSize()
		if len(raw) < n+a.Overhead() {
			return sealedLogin{}, false
		}
		plain, err := a.Open(nil, raw[:n], raw[n:], loginSealAAD)
		if err != nil {
			continue
		}
		var l sealedLogin
		if json.Unmarshal(plain, &l) != nil || !now.Before(l.Expires) {
			return sealedLogin{}, false
		}
		return l, true
	}
	return sealedLogin{}, false
}
