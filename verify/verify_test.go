package verify_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/verify"
)

const (
	audience = "https://tools.example.com"
	client   = "tool-server"
	secret   = "a-long-enough-test-secret"
)

// valet is a stand-in for Valet's public surface as the verifier sees it:
// a JWKS, introspection (answers from the revoked set) and the revocation
// feed (snapshot and SSE stream), each request counted. The stream sends
// whatever the test pushes on events; a test can cut it.
type valet struct {
	t     *testing.T
	srv   *httptest.Server
	key   ed25519.PrivateKey
	kid   string
	now   func() time.Time
	calls sync.Map // path → *atomic.Int64
	// consumed are the action token jtis used at /v1/actions/consume.
	consumed sync.Map
	events   chan string
	cut      chan struct{}

	// jwksHold, when set, holds every JWKS answer until it is closed;
	// jwksIn is told each time one is held.
	jwksHold, jwksIn chan struct{}

	mu       sync.Mutex
	revoked  map[string]bool // jti
	cursors  []string        // cursor of each stream request
	introOff bool
}

func newValet(t *testing.T, now func() time.Time) *valet {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	v := &valet{t: t, key: key, kid: "k1", now: now, events: make(chan string, 16), cut: make(chan struct{}, 1), revoked: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, r *http.Request) {
		if v.jwksHold != nil {
			v.jwksIn <- struct{}{}
			<-v.jwksHold
		}
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: v.kid, Algorithm: "EdDSA", Use: "sig"}}})
	})
	mux.HandleFunc("POST /v1/introspect", func(w http.ResponseWriter, r *http.Request) {
		v.mu.Lock()
		off := v.introOff
		v.mu.Unlock()
		if off {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_ = r.ParseForm()
		claims := jwt.MapClaims{}
		_, _, _ = jwt.NewParser().ParseUnverified(r.PostForm.Get("token"), claims)
		v.mu.Lock()
		active := !v.revoked[fmt.Sprint(claims["jti"])]
		v.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]bool{"active": active})
	})
	mux.HandleFunc("POST /v1/actions/consume", func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		claims := jwt.MapClaims{}
		_, _, _ = jwt.NewParser().ParseUnverified(r.PostForm.Get("token"), claims)
		jti := fmt.Sprint(claims["jti"])
		_, used := v.consumed.LoadOrStore(jti, true)
		_ = json.NewEncoder(w).Encode(map[string]bool{"consumed": !used})
	})
	mux.HandleFunc("GET /v1/revocations", func(w http.ResponseWriter, r *http.Request) {
		v.mu.Lock()
		var revoked []map[string]any
		for jti := range v.revoked {
			revoked = append(revoked, map[string]any{"jti": jti, "task_id": "tsk_" + jti, "exp": now().Add(time.Hour).Unix()})
		}
		v.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"cursor": "1-0", "revoked": revoked, "epochs": []any{}})
	})
	mux.HandleFunc("GET /v1/revocations/stream", func(w http.ResponseWriter, r *http.Request) {
		v.mu.Lock()
		v.cursors = append(v.cursors, r.URL.Query().Get("cursor"))
		v.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-v.cut:
				return // the stream drops
			case ev := <-v.events:
				fmt.Fprint(w, ev)
				w.(http.Flusher).Flush()
			}
		}
	})
	v.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := v.calls.LoadOrStore(r.URL.Path, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(v.srv.Close)
	return v
}

func (v *valet) count(path string) int64 {
	n, ok := v.calls.Load(path)
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Load()
}

// revoke marks jti revoked for introspection and the snapshot, and
// returns its stream event with the given id.
func (v *valet) revoke(jti, id string) string {
	v.mu.Lock()
	v.revoked[jti] = true
	v.mu.Unlock()
	return fmt.Sprintf("id: %s\nevent: revoked\ndata: {\"jti\":%q,\"task_id\":\"tsk_%s\",\"exp\":%d}\n\n", id, jti, jti, v.now().Add(time.Hour).Unix())
}

// token mints a task token for jti, signed with key under kid.
func (v *valet) token(t *testing.T, jti, kid string, key ed25519.PrivateKey) string {
	now := v.now()
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{
		"iss": v.srv.URL, "aud": audience, "sub": "agent-a", "jti": jti, "task_id": "tsk_" + jti,
		"tools": []string{"tickets.read"}, "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	})
	tok.Header["typ"], tok.Header["kid"] = "at+jwt", kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newVerifier(t *testing.T, v *valet, now func() time.Time) *verify.Verifier {
	ver, err := verify.New(verify.Config{Issuer: v.srv.URL, Audience: audience, ClientID: client, ClientSecret: secret, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return ver
}

func check(ver *verify.Verifier, token string) int {
	r := httptest.NewRequest(http.MethodGet, "/tickets/1", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	if _, err := ver.Check(context.Background(), r, "tickets.read"); err != nil {
		return err.(*verify.Error).Status
	}
	return http.StatusOK
}

// TestKidFlood: tokens naming ever new unknown kids cost at most one JWKS
// fetch per 30 s of the verifier's clock, and every one is refused.
func TestKidFlood(t *testing.T) {
	c := testkit.NewClock(time.Unix(1_800_000_000, 0))
	v := newValet(t, c.Now)
	ver := newVerifier(t, v, c.Now)
	_, rogue, _ := ed25519.GenerateKey(rand.Reader)
	if s := check(ver, v.token(t, "good", v.kid, v.key)); s != 200 {
		t.Fatalf("a good token: %d", s)
	}
	if n := v.count("/.well-known/jwks.json"); n != 1 {
		t.Fatalf("JWKS fetches after the first token: %d, want 1", n)
	}
	cases := []struct {
		name    string
		advance time.Duration
		want    int64 // JWKS fetches after the flood
	}{
		{"at once", 0, 1},
		{"29 s later", 29 * time.Second, 1},
		{"30 s after the fetch", time.Second, 2},
		{"10 s after that", 10 * time.Second, 2},
		{"another 30 s", 20 * time.Second, 3},
	}
	flood := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.Advance(tc.advance)
			for i := range 500 {
				flood++
				if s := check(ver, v.token(t, fmt.Sprint("f", i), fmt.Sprintf("kid-%d", flood), rogue)); s != 401 {
					t.Fatalf("unknown kid: %d", s)
				}
			}
			if n := v.count("/.well-known/jwks.json"); n != tc.want {
				t.Fatalf("JWKS fetches: %d, want %d", n, tc.want)
			}
			if s := check(ver, v.token(t, "good2", v.kid, v.key)); s != 200 {
				t.Fatalf("a good token during the flood: %d", s)
			}
		})
	}
	t.Logf("%d tokens with unknown kids over 60 s of clock: %d JWKS fetches", flood, v.count("/.well-known/jwks.json"))
}

// TestIntrospectionBeforeFeed: until the feed is live every check asks
// introspection (one call each; revoked → 401; Valet down → 503, never
// allowed); once live, checks cost no call.
func TestIntrospectionBeforeFeed(t *testing.T) {
	c := testkit.NewClock(time.Unix(1_800_000_000, 0))
	v := newValet(t, c.Now)
	ver := newVerifier(t, v, c.Now)
	live, dead := v.token(t, "live", v.kid, v.key), v.token(t, "dead", v.kid, v.key)
	v.revoke("dead", "")
	if ver.Live() {
		t.Fatal("live before Run")
	}
	for range 3 {
		if s := check(ver, live); s != 200 {
			t.Fatalf("live token: %d", s)
		}
	}
	if s := check(ver, dead); s != 401 {
		t.Fatalf("revoked token: %d", s)
	}
	if n := v.count("/v1/introspect"); n != 4 {
		t.Fatalf("introspections: %d, want 4 (one per check)", n)
	}
	v.mu.Lock()
	v.introOff = true
	v.mu.Unlock()
	if s := check(ver, live); s != 503 {
		t.Fatalf("Valet down before the feed: %d, want 503", s)
	}

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go ver.Run(ctx)
	testkit.Eventually(t, ver.Live, "the feed to go live")
	before := v.count("/v1/introspect")
	for range 100 {
		if s := check(ver, live); s != 200 {
			t.Fatalf("live token on the feed: %d", s)
		}
	}
	if s := check(ver, dead); s != 401 {
		t.Fatalf("revoked token (from the snapshot): %d", s)
	}
	if n := v.count("/v1/introspect") - before; n != 0 {
		t.Fatalf("%d introspections once the feed is live, want 0", n)
	}
}

// TestFeedReconnect: when the stream drops, the verifier falls back to
// introspection, reconnects from the id of the last event it applied (not
// a new snapshot), and applies a revocation made while it was away.
func TestFeedReconnect(t *testing.T) {
	c := testkit.NewClock(time.Unix(1_800_000_000, 0))
	v := newValet(t, c.Now)
	ver := newVerifier(t, v, c.Now)
	a, b := v.token(t, "a", v.kid, v.key), v.token(t, "b", v.kid, v.key)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go ver.Run(ctx)
	testkit.Eventually(t, ver.Live, "the feed to go live")

	v.events <- v.revoke("a", "5-0")
	testkit.Eventually(t, func() bool { return check(ver, a) == 401 }, "token a refused from the stream")
	if n := v.count("/v1/introspect"); n != 0 {
		t.Fatalf("introspections while live: %d", n)
	}

	// The stream drops. While it is down, b is revoked; the event will be
	// sent on the next stream.
	v.cut <- struct{}{}
	testkit.Eventually(t, func() bool { return !ver.Live() }, "the verifier to notice the drop")
	ev := v.revoke("b", "6-0")
	if s := check(ver, b); s != 401 {
		t.Fatalf("token b while the feed is down (introspection): %d", s)
	}
	if n := v.count("/v1/introspect"); n < 1 {
		t.Fatal("no introspection while the feed was down")
	}
	v.events <- ev
	testkit.Eventually(t, ver.Live, "the feed to come back")
	v.mu.Lock()
	v.introOff = true // from now on only the deny set can refuse b
	v.mu.Unlock()
	testkit.Eventually(t, func() bool { return check(ver, b) == 401 }, "token b refused from the resumed stream")
	v.mu.Lock()
	cursors := append([]string{}, v.cursors...)
	v.mu.Unlock()
	if len(cursors) < 2 || cursors[0] != "1-0" || cursors[len(cursors)-1] != "5-0" {
		t.Fatalf("stream cursors %v: want the snapshot's 1-0, then a resume from 5-0", cursors)
	}
	if n := v.count("/v1/revocations"); n != 1 {
		t.Fatalf("snapshots: %d, want 1 (the reconnection resumes from the cursor)", n)
	}
	if s := check(ver, v.token(t, "c", v.kid, v.key)); s != 200 {
		t.Fatalf("an unrevoked token after the reconnection: %d", s)
	}
}

// TestClockSkew: a tool server whose clock lags Valet's by less than
// ClockSkew takes a fresh token (iat and nbf in its future); one lagging
// more does not; exp gets no leeway at all.
func TestClockSkew(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	valetClock, toolClock := testkit.NewClock(start.Add(2*time.Second)), testkit.NewClock(start)
	v := newValet(t, valetClock.Now)
	ver := newVerifier(t, v, toolClock.Now)
	if s := check(ver, v.token(t, "ahead2s", v.kid, v.key)); s != 200 {
		t.Fatalf("a token issued 2 s ahead of the tool server's clock: %d", s)
	}
	valetClock.Advance(verify.ClockSkew)
	if s := check(ver, v.token(t, "ahead7s", v.kid, v.key)); s != 401 {
		t.Fatalf("a token issued 7 s ahead of the tool server's clock: %d, want 401", s)
	}
	valetClock.Set(start)
	tok := v.token(t, "expiring", v.kid, v.key) // exp = start + 10 min
	toolClock.Set(start.Add(10*time.Minute - time.Millisecond))
	if s := check(ver, tok); s != 200 {
		t.Fatalf("a token 1 ms before its exp: %d", s)
	}
	toolClock.Set(start.Add(10 * time.Minute))
	if s := check(ver, tok); s != 401 {
		t.Fatalf("a token at its exp: %d, want 401 (no leeway on exp)", s)
	}
}
