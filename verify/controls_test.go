package verify_test

import (
	"context"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/internal/testkit"
)

// TestFeedControls guards controls at a feed-following verifier: a freeze
// streamed as `event: control` refuses the agent's token with no call to
// Valet, its lift lets it through again, and a control the token cannot
// settle alone (a freeze narrowed to the issuer of the user it acts for,
// which the token does not name) is asked of Valet by introspection rather
// than guessed. Before, control events were ignored and the frozen agent's
// token was accepted.
func TestFeedControls(t *testing.T) {
	c := testkit.NewClock(time.Unix(1_800_000_000, 0))
	v := newValet(t, c.Now)
	ver := newVerifier(t, v, c.Now)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go ver.Run(ctx)
	testkit.Eventually(t, ver.Live, "the feed to go live")
	tok := v.token(t, "a", v.kid, v.key) // sub agent-a, no act

	v.events <- "id: 2-0\nevent: control\ndata: {\"kind\":\"freeze_agent\",\"target\":\"agent-a\",\"issuer\":\"\",\"active\":true}\n\n"
	testkit.Eventually(t, func() bool { return check(ver, tok) == 401 }, "the frozen agent's token refused from the stream")
	v.events <- "id: 3-0\nevent: something_new\ndata: {\"kind\":\"freeze_agent\",\"active\":false}\n\n"
	v.events <- "id: 4-0\nevent: control\ndata: {\"kind\":\"freeze_agent\",\"target\":\"agent-a\",\"issuer\":\"\",\"active\":false}\n\n"
	testkit.Eventually(t, func() bool { return check(ver, tok) == 200 }, "the token accepted after the lift")
	if n := v.count("/v1/introspect"); n != 0 {
		t.Fatalf("introspections while live: %d", n)
	}

	// An on-behalf-of token: held by agent-a of issuer idp, for alice of an
	// issuer the token does not name.
	now := c.Now()
	obo := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.MapClaims{
		"iss": v.srv.URL, "aud": audience, "sub": "alice", "act": map[string]any{"sub": "agent-a"}, "agent_issuer": "idp",
		"jti": "o", "task_id": "tsk_o", "tools": []string{"tickets.read"}, "iat": now.Unix(), "exp": now.Add(10 * time.Minute).Unix(),
	})
	obo.Header["typ"], obo.Header["kid"] = "at+jwt", v.kid
	oboTok, err := obo.SignedString(v.key)
	if err != nil {
		t.Fatal(err)
	}
	v.events <- "id: 5-0\nevent: control\ndata: {\"kind\":\"freeze_agent\",\"target\":\"alice\",\"issuer\":\"users\",\"active\":true}\n\n"
	testkit.Eventually(t, func() bool { check(ver, oboTok); return v.count("/v1/introspect") > 0 }, "Valet asked about the narrowed freeze of the user")
	if s := check(ver, oboTok); s != 200 { // the stand-in's introspection says active
		t.Fatalf("token Valet calls active: %d", s)
	}
	v.revoke("o", "6-0") // Valet now answers inactive (the event is not sent)
	if s := check(ver, oboTok); s != 401 {
		t.Fatalf("token Valet calls inactive: %d, want 401 from introspection", s)
	}
	asked := v.count("/v1/introspect")
	if s := check(ver, tok); s != 200 || v.count("/v1/introspect") != asked {
		t.Fatalf("a token the narrowed freeze cannot cover: %d, introspected %d times", s, v.count("/v1/introspect")-asked)
	}
}
