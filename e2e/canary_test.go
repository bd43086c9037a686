package e2e

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/valet-dev/valet/audit"
)

// TestCanarySecrets: a Vault-style token and a JWT, sent where secrets go
// (bearer headers, client secrets, token parameters, admin tokens), never
// come back out in logs, audit events (file and Redis stream), metrics or
// error bodies.
func TestCanarySecrets(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	vault := "hvs.CANARYc4n4ry5ecretV4ultT0ken0000000000"
	// A real, validly signed JWT from the agent IdP, used where it does
	// not belong, and a live task token revoked along the way.
	jwtCanary := e.identity("agent-canary")
	_, taskToken := e.declared("agent-7", 120)
	// A JWT's header and payload start alike in every token (base64 of
	// {"alg":... and {"iss":...); its signature is unique to it, so any
	// slice of the signature showing up means the token leaked.
	body := func(jwt string) string { return jwt[strings.LastIndexByte(jwt, '.')+1:] }
	canaries := map[string]string{"vault": vault, "jwt": body(jwtCanary), "task token": body(taskToken)}

	var bodies []string
	keep := func(r response) { bodies = append(bodies, string(r.Body)) }
	form := func(tok string) *strings.Reader { return strings.NewReader(url.Values{"token": {tok}}.Encode()) }
	for _, secret := range []string{vault, jwtCanary} {
		keep(e.declare(secret, `{"template":"triage","intent":"triage ticket 1","tools":["tickets.read"]}`))
		keep(e.do(http.MethodGet, "/v1/tasks/tsk_abc", secret, "", nil, false))
		keep(e.do(http.MethodPost, "/v1/introspect", secret, "application/x-www-form-urlencoded", form(secret), false))
		keep(e.do(http.MethodPost, "/v1/introspect", "", "application/x-www-form-urlencoded", form(secret), true))
		keep(e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", form(secret), true))
		keep(e.adminDo(http.MethodPost, "/v1/admin/revocations", secret, `{"selector":{"agent":"x"}}`))
		keep(e.adminDo(http.MethodGet, "/v1/admin/controls", secret, ""))
		keep(e.do(http.MethodGet, "/v1/revocations", secret, "", nil, false))
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/introspect", form(secret))
		req.SetBasicAuth(clientID, secret)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	keep(e.do(http.MethodPost, "/v1/introspect", "", "application/x-www-form-urlencoded", form(taskToken), true))
	keep(e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", form(taskToken), true))
	keep(e.do(http.MethodGet, "/v1/revocations", "", "", nil, true))
	metrics := e.do(http.MethodGet, "/metrics", "", "", nil, false)
	if metrics.Status != http.StatusOK || !strings.Contains(string(metrics.Body), "valet_declarations_total") {
		t.Fatalf("metrics: %d", metrics.Status)
	}

	var stream strings.Builder
	msgs, err := e.inc.rc.XRange(context.Background(), "valet:audit", "-", "+").Result()
	if err != nil || len(msgs) == 0 {
		t.Fatalf("audit stream: %d entries, %v", len(msgs), err)
	}
	for _, m := range msgs {
		stream.WriteString(m.Values["line"].(string))
	}
	if _, err := audit.VerifyStream(context.Background(), e.inc.rc, "valet"); err != nil {
		t.Fatalf("audit stream does not verify: %v", err)
	}
	sinks := map[string]string{
		"logs": e.inc.logs.String(), "audit file": e.audit.String(), "audit stream": stream.String(),
		"metrics": string(metrics.Body), "response bodies": strings.Join(bodies, "\n"),
	}
	for sink, text := range sinks {
		if len(text) == 0 {
			t.Fatalf("%s is empty: the test would prove nothing", sink)
		}
		for name, secret := range canaries {
			// Any 24-byte slice of the secret (a JWT's signature, say)
			// counts as a leak.
			for i := 0; i+24 <= len(secret); i += 12 {
				if strings.Contains(text, secret[i:i+24]) {
					at := strings.Index(text, secret[i:i+24])
					t.Errorf("%s leaks the %s canary (bytes %d-%d): ...%s...", sink, name, i, i+24, text[max(0, at-200):min(len(text), at+60)])
					break
				}
			}
		}
	}
}
