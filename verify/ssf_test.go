package verify_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/verify"
)

// TestFollowSSFRefusesBadSETs: a verifier following an SSF poll stream
// applies a valid credential-change SET (its token is refused with no call
// per check) and refuses, reporting each in setErrs and applying none, a
// SET for another audience, one of another typ, one signed by another key
// and one from another issuer; it acknowledges only the valid one.
const ssfDisabled = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"

func TestFollowSSFRefusesBadSETs(t *testing.T) {
	v := newValet(t, time.Now)
	ver := newVerifier(t, v, time.Now)
	_, rogue, _ := ed25519.GenerateKey(rand.Reader)
	setFor := func(jti, typ, iss, aud string, key ed25519.PrivateKey) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"iss": iss, "aud": aud, "iat": time.Now().Unix(), "jti": "set-" + jti,
			"sub_id": map[string]any{"format": "complex", "credential": map[string]any{"format": "opaque", "id": jti}},
			"events": map[string]any{"https://schemas.openid.net/secevent/caep/event-type/credential-change": map[string]any{"change_type": "revoke"}}})
		tok.Header["typ"], tok.Header["kid"] = typ, v.kid
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	sets := map[string]string{
		"set-ok":      setFor("ok", "secevent+jwt", v.srv.URL, "urn:me", v.key),
		"set-bad-aud": setFor("bad-aud", "secevent+jwt", v.srv.URL, "urn:someone-else", v.key),
		"set-bad-typ": setFor("bad-typ", "JWT", v.srv.URL, "urn:me", v.key),
		"set-bad-key": setFor("bad-key", "secevent+jwt", v.srv.URL, "urn:me", rogue),
		"set-bad-iss": setFor("bad-iss", "secevent+jwt", "https://elsewhere", "urn:me", v.key),
	}
	var mu sync.Mutex
	var acked []string
	setErrs := map[string]any{}
	poll := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Ack     []string       `json:"ack"`
			SetErrs map[string]any `json:"setErrs"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		acked = append(acked, req.Ack...)
		for k, e := range req.SetErrs {
			setErrs[k] = e
		}
		out := sets
		sets = map[string]string{}
		mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer viewer" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"sets": out})
	}))
	t.Cleanup(poll.Close)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		_ = ver.FollowSSF(ctx, verify.SSFStream{PollURL: poll.URL, Audience: "urn:me",
			Authorization: func(context.Context) (string, error) { return "Bearer viewer", nil }})
	}()
	testkit.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) == 1 && len(setErrs) == 4 }, "the poll acks one SET and reports four")
	mu.Lock()
	first := acked[0]
	mu.Unlock()
	if first != "set-ok" {
		t.Fatalf("acked %v", first)
	}
	if !ver.Live() {
		t.Fatal("the stream is not live")
	}
	before := v.count("/v1/introspect")
	if s := check(ver, v.token(t, "ok", v.kid, v.key)); s != http.StatusUnauthorized {
		t.Fatalf("the token of the valid SET: %d, want 401", s)
	}
	for _, jti := range []string{"bad-aud", "bad-typ", "bad-key", "bad-iss"} {
		if s := check(ver, v.token(t, jti, v.kid, v.key)); s != http.StatusOK {
			t.Fatalf("token %s, named only by a refused SET: %d, want 200", jti, s)
		}
	}
	if n := v.count("/v1/introspect") - before; n != 0 {
		t.Fatalf("%d introspections while live, want 0", n)
	}

	// The applied SET served again, and under another jti: both refused.
	// One under a kid the verifier does not know, within 30 s of its JWKS
	// fetch (a key Valet may have just rotated in), is neither acknowledged
	// nor refused: Valet would send it again.
	ok := setFor("ok", "secevent+jwt", v.srv.URL, "urn:me", v.key)
	rotated := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{"iss": v.srv.URL, "aud": "urn:me", "iat": time.Now().Unix(), "jti": "set-rotated",
		"sub_id": map[string]any{"format": "opaque", "id": "agent-r"}, "events": map[string]any{ssfDisabled: map[string]any{}}})
	rotated.Header["typ"], rotated.Header["kid"] = "secevent+jwt", "rotated-in"
	rotatedSET, err := rotated.SignedString(rogue)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	sets = map[string]string{"set-ok": ok, "set-other": ok, "set-rotated": rotatedSET}
	mu.Unlock()
	testkit.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(setErrs) == 6 }, "the replay and the mismatched jti are reported")
	mu.Lock()
	defer mu.Unlock()
	if len(acked) != 1 || setErrs["set-ok"] == nil || setErrs["set-other"] == nil || setErrs["set-rotated"] != nil {
		t.Fatalf("acked %v, setErrs %v", acked, setErrs)
	}
	if d := fmt.Sprint(setErrs["set-ok"]); !strings.Contains(d, "replayed") {
		t.Fatalf("the replay is reported as %s", d)
	}
}
