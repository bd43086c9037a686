package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/redistest"
)

// TestRedisDataLossFailsClosed guards issue 9 #9: Redis restarted empty
// (persistence off) used to undo every revocation and freeze silently: a
// frozen agent was granted tasks again, POST /v1/revoke of a pre-loss token
// answered 200 having recorded nothing, verifiers following the feed kept
// accepting pre-loss tokens, and /readyz said nothing. Now the generation
// marker notices the loss: a global epoch revokes everything issued before
// it (announced on the feed), the freeze is written back from the cache,
// the revoke of an unrecorded token puts it on the deny list, and /readyz
// carries a warning.
func TestRedisDataLossFailsClosed(t *testing.T) {
	e := newEnv(t, envOptions{incident: true, redis: redistest.Start(t)}) // no AOF: a restart loses everything
	rita := e.adminToken("rita", "valet-responders")
	_, before := e.declared("agent-1", 600)
	if r := e.adminDo(http.MethodPost, "/v1/admin/controls", rita, `{"kind":"freeze_agent","target":"agent-7","reason":"leaked key","force":true}`); r.Status != http.StatusCreated {
		t.Fatalf("freeze: %d %s", r.Status, r.Body)
	}
	if r := e.do(http.MethodGet, "/readyz", "", "", nil, false); r.Status != http.StatusOK || strings.Contains(string(r.Body), "warning") {
		t.Fatalf("readyz before the loss: %d %s", r.Status, r.Body)
	}

	e.redis.Restart() // killed and started again, empty
	e.clock.Advance(time.Second)

	// The frozen agent stays frozen: the cached controls keep answering.
	r := e.declare(e.identity("agent-7"), `{"template":"triage","intent":"triage ticket 1","tools":["tickets.read"]}`)
	if r.Status != http.StatusForbidden || r.json(t)["rule"] != "frozen-agent" {
		t.Fatalf("frozen agent after the loss: %d %s, want 403 frozen-agent", r.Status, r.Body)
	}
	// The next refresh (every second; run here at once) finds the loss
	// and writes the cached freeze back for the other replicas.
	e.inc.controls.Reload(context.Background())
	if n, err := e.inc.rc.HLen(context.Background(), "valet:controls").Result(); err != nil || n != 1 {
		t.Fatalf("controls in Redis after the loss: %d %v, want the freeze written back", n, err)
	}

	// The pre-loss token is inactive, and its revocation is recorded, not
	// a 200 that wrote nothing.
	if in := e.introspect(before); in["active"] != false {
		t.Fatalf("pre-loss token after the loss: %v", in)
	}
	if r := e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+before), true); r.Status != http.StatusOK {
		t.Fatalf("revoke of the pre-loss token: %d %s", r.Status, r.Body)
	}
	jti := jwtID(t, before)
	if n, err := e.inc.rc.Exists(context.Background(), "valet:deny:"+jti).Result(); err != nil || n != 1 {
		t.Fatalf("deny entry of the revoked pre-loss token: %d %v", n, err)
	}

	// Verifiers hear it: the snapshot holds the global epoch and the jti.
	r = e.do(http.MethodGet, "/v1/revocations", "", "", nil, true)
	if r.Status != http.StatusOK {
		t.Fatalf("snapshot: %d %s", r.Status, r.Body)
	}
	var snap struct {
		Revoked []struct{ JTI string } `json:"revoked"`
		Epochs  []struct {
			Dimension, Key string
			Before         int64
		} `json:"epochs"`
	}
	if err := json.Unmarshal(r.Body, &snap); err != nil {
		t.Fatal(err)
	}
	global := false
	for _, ep := range snap.Epochs {
		global = global || (ep.Dimension == "all" && ep.Key == "*" && ep.Before > 0)
	}
	revoked := false
	for _, rv := range snap.Revoked {
		revoked = revoked || rv.JTI == jti
	}
	if !global || !revoked {
		t.Fatalf("snapshot after the loss: global epoch %v, revoked jti %v: %s", global, revoked, r.Body)
	}

	// /readyz says what happened (and stays 200: issuing is safe again).
	r = e.do(http.MethodGet, "/readyz", "", "", nil, false)
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), "lost the ledger") {
		t.Fatalf("readyz after the loss: %d %s", r.Status, r.Body)
	}

	// A new declaration works, and its token is live.
	_, after := e.declared("agent-1", 600)
	if in := e.introspect(after); in["active"] != true {
		t.Fatalf("post-loss token: %v", in)
	}
}

// jwtID is a token's jti (the token is not verified).
func jwtID(t *testing.T, tok string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT")
	}
	var c struct {
		JTI string `json:"jti"`
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c.JTI
}

// TestFirstDeclarationAfterRedisRecovers guards issue 9 #14 end to end:
// declarations kept failing for 1 to 4 s after Redis was healthy again,
// until the cached controls' next refresh. Now the first declaration
// after Redis answers succeeds.
func TestFirstDeclarationAfterRedisRecovers(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	e.declared("agent-7", 600)
	e.redis.Kill()
	e.inc.controls.Reload(context.Background()) // the refresh during the outage fails
	body := `{"template":"triage","intent":"triage ticket 1","tools":["tickets.read"]}`
	if r := e.declare(e.identity("agent-7"), body); r.Status != http.StatusServiceUnavailable {
		t.Fatalf("declare with Redis down: %d %s", r.Status, r.Body)
	}
	e.redis.Restart()
	if r := e.declare(e.identity("agent-7"), body); r.Status != http.StatusCreated {
		t.Fatalf("first declaration after Redis is back: %d %s", r.Status, r.Body)
	}
}
