package console

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/testkit"
)

func TestSignInIsSealedAndExpires(t *testing.T) {
	clock := testkit.NewClock(time.Unix(1_700_000_000, 0))
	s := newSessions(clock.Now)
	if _, ok := s.finish("made-up"); ok {
		t.Fatal("a made-up cookie finished a sign-in")
	}
	id := s.start(pending{Login: identity.LoginState{State: "st", Nonce: "n", Verifier: "v"}})
	p, ok := s.finish(id)
	if !ok || p.Login.Verifier != "v" || p.Login.Nonce != "n" || p.Login.State != "st" {
		t.Fatalf("finish = %+v, %t", p, ok)
	}
	if raw, _ := base64.RawURLEncoding.DecodeString(id); strings.Contains(string(raw), `"verifier"`) {
		t.Fatal("the sign-in cookie holds the PKCE verifier in the clear")
	}
	// A changed cookie, or one sealed by another process, does not open.
	raw, _ := base64.RawURLEncoding.DecodeString(id)
	raw[len(raw)-1] ^= 1
	if _, ok := s.finish(base64.RawURLEncoding.EncodeToString(raw)); ok {
		t.Fatal("a tampered sign-in cookie finished")
	}
	if _, ok := newSessions(clock.Now).finish(id); ok {
		t.Fatal("another process's sign-in cookie finished")
	}
	// No server state: a flood of sign-ins starts nothing that could push
	// out a responder's.
	for range 20000 {
		s.start(pending{Login: identity.LoginState{State: "flood"}})
	}
	if p, ok := s.finish(id); !ok || p.Login.State != "st" {
		t.Fatal("a flood of sign-ins pushed out one under way")
	}
	clock.Advance(pendingTTL)
	if _, ok := s.finish(id); ok {
		t.Fatal("an expired sign-in finished")
	}
}

func TestSessionsExpireAndEnd(t *testing.T) {
	clock := testkit.NewClock(time.Unix(1_700_000_000, 0))
	s := newSessions(clock.Now)
	p := broker.Principal{Issuer: "admins", Subject: "ops"}
	a := s.create(p, clock.Now().Add(time.Hour))
	b := s.create(p, clock.Now().Add(2*time.Hour))
	ga, ok := s.get(a)
	gb, _ := s.get(b)
	if !ok || ga.principal.Subject != "ops" || ga.csrf == "" || ga.csrf == gb.csrf {
		t.Fatalf("session %+v, %t; want ops with a CSRF token of its own", ga, ok)
	}
	if _, ok := s.get("forged"); ok {
		t.Fatal("a made-up id found a session")
	}
	for k := range s.live {
		if k == a || k == b {
			t.Fatal("the store keeps cookie values as keys")
		}
	}
	clock.Advance(time.Hour)
	if _, ok := s.get(a); ok {
		t.Fatal("an expired session is still live")
	}
	s.end(b)
	if _, ok := s.get(b); ok {
		t.Fatal("an ended session is still live")
	}
}

func TestSessionsAreBounded(t *testing.T) {
	clock := testkit.NewClock(time.Unix(1_700_000_000, 0))
	s := newSessions(clock.Now)
	first := s.create(broker.Principal{Subject: "first"}, clock.Now().Add(time.Minute))
	for i := range maxSessions {
		s.create(broker.Principal{Subject: "x"}, clock.Now().Add(time.Hour+time.Duration(i)))
	}
	if len(s.live) != maxSessions {
		t.Fatalf("%d sessions live; want the cap %d", len(s.live), maxSessions)
	}
	if _, ok := s.get(first); ok {
		t.Fatal("the session closest to expiry was not the one evicted")
	}
}
