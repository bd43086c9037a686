package verify_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/verify"
)

// TestJWKSFetchOutsideTheKeyLock guards issue 9 (low, verify): the JWKS
// was fetched while holding the key lock, so one slow fetch (an unknown
// kid) stalled every check, even those whose key was known. Now a check
// with a known kid completes while a fetch hangs, and the checks with
// unknown kids that arrive meanwhile share that one fetch.
func TestJWKSFetchOutsideTheKeyLock(t *testing.T) {
	c := testkit.NewClock(time.Unix(1_800_000_000, 0))
	v := newValet(t, c.Now)
	// A client that outwaits the guard below, so a fetch that held the
	// lock would hold it until the test gives up.
	ver, err := verify.New(verify.Config{Issuer: v.srv.URL, Audience: audience, ClientID: client, ClientSecret: secret,
		Now: c.Now, HTTPClient: &http.Client{Timeout: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	good := v.token(t, "good", v.kid, v.key)
	if s := check(ver, good); s != 200 {
		t.Fatalf("a good token: %d", s)
	}
	c.Advance(time.Minute) // past the refresh limit
	v.jwksHold, v.jwksIn = make(chan struct{}), make(chan struct{}, 16)
	_, rogue, _ := ed25519.GenerateKey(rand.Reader)

	const waiters = 5
	unknown := make(chan int, waiters)
	go func() { unknown <- check(ver, v.token(t, "u0", "kid-new", rogue)) }()
	<-v.jwksIn // the fetch is in flight and held
	for i := 1; i < waiters; i++ {
		go func() { unknown <- check(ver, v.token(t, fmt.Sprint("u", i), "kid-new", rogue)) }()
	}

	known := make(chan int, 1)
	go func() { known <- check(ver, good) }()
	select {
	case s := <-known:
		if s != 200 {
			t.Fatalf("known kid during a fetch: %d", s)
		}
	case <-time.After(10 * time.Second): // a failure guard, not a timing assertion
		close(v.jwksHold)
		t.Fatal("a check with a known kid waited for the JWKS fetch")
	}

	close(v.jwksHold)
	for range waiters {
		if s := <-unknown; s != 401 {
			t.Fatalf("unknown kid: %d", s)
		}
	}
	if n := v.count("/.well-known/jwks.json"); n != 2 {
		t.Fatalf("JWKS fetches: %d, want 2 (start, then one shared by %d unknown kids)", n, waiters)
	}
}

// boundToken is v.token bound to the DPoP key with thumbprint jkt.
func boundToken(t *testing.T, v *valet, jti, jkt string) string {
	now := v.now()
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{
		"iss": v.srv.URL, "aud": audience, "sub": "agent-a", "jti": jti, "task_id": "tsk_" + jti,
		"tools": []string{"tickets.read"}, "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
		"cnf": map[string]string{"jkt": jkt},
	})
	tok.Header["typ"], tok.Header["kid"] = "at+jwt", v.kid
	s, err := tok.SignedString(v.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDPoPNeedsPublicURL guards issue 9 (low, verify): without PublicURL
// the verifier built the htu from the request's Host header, which the
// client chooses, so a proof made for any host passed. Now a bound token
// is refused unless PublicURL is set, the htu is checked against it, and a
// replayed proof jti is refused.
func TestDPoPNeedsPublicURL(t *testing.T) {
	c := testkit.NewClock(time.Unix(1_800_000_000, 0))
	v := newValet(t, c.Now)
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, err := dpop.NewSigner(k, jose.ES256)
	if err != nil {
		t.Fatal(err)
	}
	tok := boundToken(t, v, "b1", signer.JKT())
	send := func(ver *verify.Verifier, host, htu string) int {
		proof, err := signer.Proof(http.MethodGet, htu, c.Now(), tok)
		if err != nil {
			t.Fatal(err)
		}
		return sendProof(ver, host, tok, proof)
	}

	noURL := newVerifier(t, v, c.Now)
	if s := send(noURL, "evil.example.com", "http://evil.example.com/tickets/1"); s != 401 {
		t.Fatalf("bound token, no PublicURL, proof for the Host header: %d, want 401", s)
	}

	ver, err := verify.New(verify.Config{Issuer: v.srv.URL, Audience: audience, ClientID: client, ClientSecret: secret,
		Now: c.Now, PublicURL: "https://tools.example.com/"})
	if err != nil {
		t.Fatal(err)
	}
	if s := send(ver, "evil.example.com", "http://evil.example.com/tickets/1"); s != 401 {
		t.Fatalf("proof for the Host header, not PublicURL: %d, want 401", s)
	}
	proof, _ := signer.Proof(http.MethodGet, "https://tools.example.com/tickets/1", c.Now(), tok)
	if s := sendProof(ver, "evil.example.com", tok, proof); s != 200 {
		t.Fatalf("proof for PublicURL: %d, want 200", s)
	}
	if s := sendProof(ver, "tools.example.com", tok, proof); s != 401 {
		t.Fatalf("replayed proof: %d, want 401", s)
	}

	for _, bad := range []string{"tools.example.com", "ftp://tools.example.com", "https://u:p@tools.example.com", "https://tools.example.com/?x=1"} {
		if _, err := verify.New(verify.Config{Issuer: v.srv.URL, Audience: audience, ClientID: client, ClientSecret: secret,
			PublicURL: bad}); err == nil || !strings.Contains(err.Error(), "public URL") {
			t.Errorf("PublicURL %q: %v, want refused", bad, err)
		}
	}
}

func sendProof(ver *verify.Verifier, host, tok, proof string) int {
	r := httptest.NewRequest(http.MethodGet, "/tickets/1", nil)
	r.Host = host
	r.Header.Set("Authorization", "DPoP "+tok)
	r.Header.Set("DPoP", proof)
	if _, err := ver.Check(context.Background(), r, "tickets.read"); err != nil {
		return err.(*verify.Error).Status
	}
	return http.StatusOK
}
