package oauth_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/oauth"
)

// TestDPoPServerNonce: with server nonces on (RFC 9449 section 8), a proof
// without the current nonce is use_dpop_nonce with a DPoP-Nonce header and
// writes nothing; the retry carrying that nonce gets a bound token; a nonce
// two windows old or forged is refused again. Bearer requests need no
// nonce.
func TestDPoPServerNonce(t *testing.T) {
	var f *fixture
	f = newFixtureWith(t, nil, func(c *oauth.Config) {
		c.DPoPNonces = dpop.NewNonces(time.Minute, func() time.Time { return f.now })
	})
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := dpop.NewSigner(key, jose.EdDSA)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(nonce string) (int, http.Header, map[string]any) {
		t.Helper()
		proof, err := signer.ProofWithNonce(http.MethodPost, issuerURL+"/v1/token", f.now, "", nonce)
		if err != nil {
			t.Fatal(err)
		}
		return f.post(url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {f.assertion(nil)},
			"scope": {"template:triage tickets.read"}}, "DPoP", proof)
	}
	status, h, body := ask("")
	nonce := h.Get(dpop.NonceHeader)
	if status != http.StatusBadRequest || body["error"] != oauth.ErrUseDPoPNonce || nonce == "" || h.Get("Cache-Control") != "no-store" {
		t.Fatalf("proof without a nonce: %d %v nonce %q", status, body, nonce)
	}
	if n := f.ledger.writes.Load(); n != 0 {
		t.Fatalf("%d ledger writes for a refused request", n)
	}
	status, h, body = ask(nonce)
	if status != http.StatusOK || body["token_type"] != "DPoP" || h.Get(dpop.NonceHeader) == "" {
		t.Fatalf("retry with the nonce: %d %v", status, body)
	}
	// Still good in the next window; two windows later it is stale.
	f.now = f.now.Add(time.Minute)
	if status, _, body = ask(nonce); status != http.StatusOK {
		t.Fatalf("nonce of the previous window: %d %v", status, body)
	}
	f.now = f.now.Add(time.Minute)
	if status, h, body = ask(nonce); status != http.StatusBadRequest || body["error"] != oauth.ErrUseDPoPNonce || h.Get(dpop.NonceHeader) == nonce {
		t.Fatalf("stale nonce: %d %v (fresh nonce %q)", status, body, h.Get(dpop.NonceHeader))
	}
	other := dpop.NewNonces(time.Minute, func() time.Time { return f.now }).Issue() // another key's nonce
	if status, _, body = ask(other); status != http.StatusBadRequest || body["error"] != oauth.ErrUseDPoPNonce {
		t.Fatalf("forged nonce: %d %v", status, body)
	}
	writes := f.ledger.writes.Load()
	// A bearer request (no DPoP header) needs no nonce.
	status, h, body = f.post(url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {f.assertion(nil)},
		"scope": {"template:triage tickets.read"}})
	if status != http.StatusOK || body["token_type"] != "Bearer" || h.Get(dpop.NonceHeader) == "" {
		t.Fatalf("bearer request: %d %v", status, body)
	}
	if f.ledger.writes.Load() != writes+1 {
		t.Fatalf("the bearer grant wrote %d records, want 1", f.ledger.writes.Load()-writes)
	}
}

func TestNoncesRefuseGarbage(t *testing.T) {
	n := dpop.NewNonces(0, nil)
	for _, s := range []string{"", "x", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", n.Issue() + "A", "!!!"} {
		if n.Valid(s) {
			t.Errorf("Valid(%q) = true", s)
		}
	}
	if !n.Valid(n.Issue()) {
		t.Error("a fresh nonce is not valid")
	}
}
