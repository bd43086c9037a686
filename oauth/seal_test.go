package oauth

import (
	"strings"
	"testing"
	"time"
)

func TestLoginSealer(t *testing.T) {
	now := time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC)
	oldKey, _ := DeriveLoginSealKey([]byte("retiring signing key"))
	newKey, _ := DeriveLoginSealKey([]byte("active signing key"))
	before, err := newLoginSealer([][]byte{oldKey})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := newLoginSealer([][]byte{newKey, oldKey}) // a replica after rotation
	other, _ := newLoginSealer(nil)                      // a broker with a key of its own
	l := sealedLogin{Request: authzRequest{ClientID: "host", Tools: []string{"notes.read"}, Verifier: "secret-verifier"},
		UpState: hashHex("upstream-state"), Expires: now.Add(10 * time.Minute)}
	v, err := before.seal(l)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(v, "secret-verifier") || strings.Contains(v, "host") {
		t.Fatalf("the cookie shows what it seals: %s", v)
	}
	if got, ok := after.open(v, now); !ok || got.Request.Verifier != "secret-verifier" || got.UpState != l.UpState {
		t.Fatalf("another replica sharing the key: %v %+v", ok, got)
	}
	if _, ok := other.open(v, now); ok {
		t.Fatal("a broker without the key opened the sign-in")
	}
	if _, ok := after.open(v, now.Add(10*time.Minute)); ok {
		t.Fatal("an expired sign-in opened")
	}
	// Every single changed character is refused (the AEAD's tag).
	for i := 0; i < len(v); i += 7 {
		b := []byte(v)
		b[i] ^= 1
		if _, ok := after.open(string(b), now); ok {
			t.Fatalf("a cookie changed at %d opened", i)
		}
	}
	for _, bad := range []string{"", "not base64!", "AAAA", strings.Repeat("A", maxSealedCookie+1)} {
		if _, ok := after.open(bad, now); ok {
			t.Fatalf("%q opened", bad)
		}
	}
	// What the new key seals, a replica still on the old key alone cannot
	// open: replicas must share the active key.
	v2, _ := after.seal(l)
	if _, ok := before.open(v2, now); ok {
		t.Fatal("a sign-in sealed under the new key opened under the old one only")
	}
	big := l
	big.Request.Tools = []string{strings.Repeat("t", maxSealedCookie)}
	if _, err := after.seal(big); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("an oversized sign-in was sealed: %v", err)
	}
	if _, err := newLoginSealer([][]byte{[]byte("short")}); err == nil {
		t.Fatal("a 5-byte key was taken")
	}
}
