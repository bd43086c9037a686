// Package dpop checks and makes RFC 9449 DPoP proofs: the broker checks
// them on declarations and exchanges, the verifier on tool calls, and
// agents make them. Replay of a proof's jti is the caller's to refuse (it
// needs shared state); everything else about a proof is checked here.
package dpop

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// The Authorization schemes that carry a task token: a plain bearer token
// (RFC 6750) and a DPoP-bound one (RFC 9449 section 7.1).
const (
	Bearer = "Bearer"
	DPoP   = "DPoP"
)

// AccessToken reads r's "Authorization: <scheme> <token>" header when its
// scheme is one of schemes (compared case-insensitively), and returns the
// token and the scheme as sent; "", "" for any other header or none. It is
// the one reader of that header for the broker and the verifier alike.
func AccessToken(r *http.Request, schemes ...string) (token, scheme string) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !slices.ContainsFunc(schemes, func(s string) bool { return strings.EqualFold(s, scheme) }) {
		return "", ""
	}
	return strings.TrimSpace(token), scheme
}

const (
	// HeaderType is the typ of every proof.
	HeaderType = "dpop+jwt"
	// Window is how far a proof's iat may be from now, either way.
	Window = 60 * time.Second
	// MaxProofBytes caps a proof before it is parsed.
	MaxProofBytes = 4096
)

// Algorithms are the asymmetric algorithms a proof may be signed with.
var Algorithms = []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256, jose.ES384, jose.RS256, jose.PS256}

// ErrInvalidProof is wrapped by every error of Check.
var ErrInvalidProof = errors.New("invalid DPoP proof")

// Proof is a checked proof.
type Proof struct {
	// JKT is the RFC 7638 SHA-256 thumbprint of the proof's key, base64url.
	JKT      string
	JTI      string
	IssuedAt time.Time
	// Nonce is the proof's nonce claim, if any (RFC 9449 section 8).
	Nonce string
}

type claims struct {
	JTI   string `json:"jti"`
	HTM   string `json:"htm"`
	HTU   string `json:"htu"`
	IAT   *int64 `json:"iat"`
	ATH   string `json:"ath,omitempty"`
	Nonce string `json:"nonce,omitempty"`
}

// Check verifies proof for a request of method to rawURL at now: typ
// dpop+jwt, an asymmetric algorithm, a public jwk header that verifies the
// signature, htm and htu equal to the request's (htu compared without query
// and fragment, per RFC 9449 section 4.3), iat within Window, a jti, and
// when accessToken is not empty an ath that is its SHA-256.
func Check(proof, method, rawURL string, now time.Time, accessToken string) (Proof, error) {
	bad := func(format string, args ...any) (Proof, error) {
		return Proof{}, fmt.Errorf("%w: %s", ErrInvalidProof, fmt.Sprintf(format, args...))
	}
	if proof == "" {
		return bad("no proof")
	}
	if len(proof) > MaxProofBytes {
		return bad("proof is %d bytes, more than %d", len(proof), MaxProofBytes)
	}
	sig, err := jose.ParseSignedCompact(proof, Algorithms)
	if err != nil {
		return bad("parsing: %v", err)
	}
	if len(sig.Signatures) != 1 {
		return bad("want one signature")
	}
	h := sig.Signatures[0].Protected
	if typ, _ := h.ExtraHeaders[jose.HeaderType].(string); typ != HeaderType {
		return bad("typ must be %s", HeaderType)
	}
	if h.JSONWebKey == nil || !h.JSONWebKey.IsPublic() || !h.JSONWebKey.Valid() {
		return bad("jwk header must hold a public key")
	}
	payload, err := sig.Verify(h.JSONWebKey)
	if err != nil {
		return bad("signature: %v", err)
	}
	var c claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return bad("claims: %v", err)
	}
	want, err := NormalizeURL(rawURL)
	if err != nil {
		return bad("request URL: %v", err)
	}
	got, err := NormalizeURL(c.HTU)
	switch {
	case c.JTI == "" || len(c.JTI) > 256:
		return bad("jti must be 1 to 256 characters")
	case c.HTM != method:
		return bad("htm %.16q does not match the request method %s", c.HTM, method)
	case err != nil || got != want:
		return bad("htu does not match the request URL")
	case c.IAT == nil:
		return bad("iat is missing")
	}
	iat := time.Unix(*c.IAT, 0)
	if iat.Before(now.Add(-Window)) || iat.After(now.Add(Window)) {
		return bad("iat is more than %s from now", Window)
	}
	if accessToken != "" && c.ATH != ATH(accessToken) {
		return bad("ath does not match the access token")
	} else if accessToken == "" && c.ATH != "" {
		return bad("ath given with no access token")
	}
	jkt, err := Thumbprint(h.JSONWebKey)
	if err != nil {
		return bad("thumbprint: %v", err)
	}
	return Proof{JKT: jkt, JTI: c.JTI, IssuedAt: iat, Nonce: c.Nonce}, nil
}

// Thumbprint is the RFC 7638 SHA-256 thumbprint of k, base64url.
func Thumbprint(k *jose.JSONWebKey) (string, error) {
	tp, err := k.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// ATH is the ath claim for an access token.
func ATH(accessToken string) string {
	sum := sha256.Sum256([]byte(accessToken))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// NormalizeURL is the form in which htu and the request URL are compared:
// scheme and host lower case, default port dropped, empty path "/", no
// query or fragment.
func NormalizeURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Scheme == "" || u.Host == "" || u.User != nil {
		return "", errors.New("must be an absolute URL without user info")
	}
	scheme, host := strings.ToLower(u.Scheme), strings.ToLower(u.Host)
	if (scheme == "https" && strings.HasSuffix(host, ":443")) || (scheme == "http" && strings.HasSuffix(host, ":80")) {
		host = host[:strings.LastIndexByte(host, ':')]
	}
	p := u.EscapedPath()
	if p == "" {
		p = "/"
	}
	return scheme + "://" + host + p, nil
}

// Signer makes proofs with one key, for agents and tests.
type Signer struct {
	signer jose.Signer
	jkt    string
}

// NewSigner wraps key (an *ecdsa.PrivateKey or ed25519.PrivateKey) with its
// algorithm.
func NewSigner(key crypto.Signer, alg jose.SignatureAlgorithm) (*Signer, error) {
	pub := jose.JSONWebKey{Key: key.Public()}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{EmbedJWK: true}).WithType(HeaderType))
	if err != nil {
		return nil, fmt.Errorf("building DPoP signer: %w", err)
	}
	jkt, err := Thumbprint(&pub)
	if err != nil {
		return nil, err
	}
	return &Signer{signer: s, jkt: jkt}, nil
}

// JKT is the thumbprint of the signer's key.
func (s *Signer) JKT() string { return s.jkt }

// Proof makes a proof for a request of method to rawURL at now, bound to
// accessToken when it is not empty.
func (s *Signer) Proof(method, rawURL string, now time.Time, accessToken string) (string, error) {
	return s.ProofWithNonce(method, rawURL, now, accessToken, "")
}

// ProofWithNonce is Proof carrying a server-provided nonce (RFC 9449
// section 8) when nonce is not empty.
func (s *Signer) ProofWithNonce(method, rawURL string, now time.Time, accessToken, nonce string) (string, error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	iat := now.Unix()
	c := claims{JTI: base64.RawURLEncoding.EncodeToString(b[:]), HTM: method, HTU: rawURL, IAT: &iat}
	if accessToken != "" {
		c.ATH = ATH(accessToken)
	}
	c.Nonce = nonce
	payload, _ := json.Marshal(c) // plain strings and an int64
	obj, err := s.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("signing DPoP proof: %w", err)
	}
	return obj.CompactSerialize()
}
