package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"testing"

	"github.com/valet-dev/valet/issuers"
)

// TestLoginSealKeys: every replica with the same signing keys derives the
// same sign-in seal keys, the active key's first; retired keys seal
// nothing; the signing key itself is never the seal key.
func TestLoginSealKeys(t *testing.T) {
	_, a, _ := ed25519.GenerateKey(rand.Reader)
	_, b, _ := ed25519.GenerateKey(rand.Reader)
	keys := []issuers.SigningKey{{KID: "a", Private: a}, {KID: "b", Private: b}, {KID: "old", Public: a.Public()}}
	one, err := loginSealKeys(keys, "b")
	if err != nil {
		t.Fatal(err)
	}
	two, _ := loginSealKeys([]issuers.SigningKey{keys[2], keys[1], keys[0]}, "b")
	if len(one) != 2 || !bytes.Equal(one[0], two[0]) || !bytes.Equal(one[1], two[1]) {
		t.Fatalf("replicas disagree: %x / %x", one, two)
	}
	fromA, _ := loginSealKeys(keys[:1], "a")
	if !bytes.Equal(one[1], fromA[0]) || bytes.Equal(one[0], fromA[0]) {
		t.Fatal("the active key does not seal first")
	}
	if bytes.Contains(b, one[0]) || len(one[0]) != 32 {
		t.Fatal("the seal key is not derived")
	}
	if _, err := loginSealKeys(keys[2:], "old"); err == nil {
		t.Fatal("retired keys alone gave a seal key")
	}
}
