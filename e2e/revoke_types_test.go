package e2e

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// TestRevokeTokenTypes guards issue 9 (low, RFC 7009): /v1/revoke
// answered 200 for every token, also for ones Valet cannot revoke (a
// trusted issuer's identity token stayed valid after a "successful"
// revocation) and for action tokens, which stayed consumable. Now: an
// action token is burnt (200, then never consumed), a token Valet cannot
// revoke answers 400 unsupported_token_type, token_type_hint orders the
// search but a wrong hint never stops it, and an invalid token answers 200.
func TestRevokeTokenTypes(t *testing.T) {
	e := newEnv(t, envOptions{templates: actionTemplates, agent: actionAgentConfig, issuers: []broker.Issuer{recognizingIssuer{}}})
	form := "application/x-www-form-urlencoded"
	revoke := func(tok, hint string) response {
		v := url.Values{"token": {tok}}
		if hint != "" {
			v.Set("token_type_hint", hint)
		}
		return e.do(http.MethodPost, "/v1/revoke", "", form, strings.NewReader(v.Encode()), true)
	}
	consume := func(tok string) any {
		r := e.do(http.MethodPost, "/v1/actions/consume", "", form, strings.NewReader("token="+tok), true)
		return r.json(t)["consumed"]
	}

	a := e.boundTask(nil, "tickets.read", "tickets.delete") // a sensitive tool is granted like any (issue 9 #5)
	for _, hint := range []string{"", broker.HintActionToken, broker.HintRefreshToken} {
		act := a.actionToken("tickets.delete", `{"ticket":"7"}`)
		if r := revoke(act, hint); r.Status != http.StatusOK {
			t.Fatalf("revoke action token (hint %q): %d %s", hint, r.Status, r.Body)
		}
		if c := consume(act); c != false {
			t.Fatalf("a revoked action token (hint %q) was consumed", hint)
		}
	}
	if !strings.Contains(e.audit.String(), `"action.revoked"`) {
		t.Error("action token revocation not audited")
	}
	// Revoking a consumed action token is success too: it is dead.
	used := a.actionToken("tickets.delete", `{"ticket":"8"}`)
	if c := consume(used); c != true {
		t.Fatal("a fresh action token was not consumed")
	}
	if r := revoke(used, ""); r.Status != http.StatusOK {
		t.Fatalf("revoke a consumed action token: %d %s", r.Status, r.Body)
	}

	// A task token with the wrong hint is still found and revoked.
	b := e.boundTask(nil, "tickets.read")
	id, tt := b.taskID, b.token
	if r := revoke(tt, broker.HintActionToken); r.Status != http.StatusOK {
		t.Fatalf("revoke task token with hint action_token: %d %s", r.Status, r.Body)
	}
	if task, _, err := e.raw.Task(context.Background(), id); err != nil || task.State != broker.StateRevoked {
		t.Fatalf("task after revoke: %+v %v", task, err)
	}

	// An identity token: Valet cannot revoke it, and says so.
	r := revoke(e.identity("agent-7"), "")
	if r.Status != http.StatusBadRequest || r.json(t)["error"] != "unsupported_token_type" {
		t.Fatalf("revoke an identity token: %d %s, want 400 unsupported_token_type", r.Status, r.Body)
	}
	// A credential that ends only with its task (the issuer recognises it).
	if r := revoke("hvs.CAESIthisLooksLikeAVaultToken", ""); r.Status != http.StatusBadRequest || r.json(t)["error"] != "unsupported_token_type" {
		t.Fatalf("revoke a Vault-shaped token: %d %s, want 400 unsupported_token_type", r.Status, r.Body)
	}
	// Garbage is invalid: 200, as RFC 7009 asks. An oversized hint is 400.
	if r := revoke("garbage", broker.HintAccessToken); r.Status != http.StatusOK {
		t.Fatalf("revoke garbage: %d", r.Status)
	}
	if r := revoke("garbage", strings.Repeat("h", 65)); r.Status != http.StatusBadRequest || r.json(t)["field"] != "token_type_hint" {
		t.Fatalf("oversized hint: %d %s", r.Status, r.Body)
	}
}

// recognizingIssuer mints nothing and recognises Vault-shaped tokens, as
// issuers.Vault does, without a Vault server.
type recognizingIssuer struct{}

func (recognizingIssuer) Kind() broker.CredentialKind { return broker.KindVaultToken }
func (recognizingIssuer) Mint(context.Context, broker.Task, broker.Principal, broker.Grant) ([]broker.Minted, error) {
	return nil, nil
}
func (recognizingIssuer) Revoke(context.Context, broker.Credential) error { return nil }
func (recognizingIssuer) Recognizes(raw string) bool                      { return strings.HasPrefix(raw, "hvs.") }
