package e2e

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/oauth"
)

// badInput is one refused token request: a form body (or raw, when the
// body is not what url.Values would encode), extra headers, and the RFC
// 6749 answer it must get.
type badInput struct {
	name   string
	form   url.Values
	raw    string
	query  string
	header map[string]string
	status int
	code   string
}

// TestOAuthBadInput: bad input at the token endpoint, over HTTP, is
// refused with the right RFC 6749 section 5.2 error (in the shape
// openapi.yaml gives, the answers going through the validating client),
// Cache-Control: no-store, no token, and not a single ledger write.
func TestOAuthBadInput(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	e, ts := newOAuthEnv(t, pub, envOptions{})
	tokenURL := e.srv.URL + oauth.TokenPath
	now := e.clock.Now()

	// clientJWT signs billing-agent's client assertion with claims
	// changed (nil removes one), by method and key.
	clientJWT := func(changes map[string]any, method jwt.SigningMethod, key any) string {
		t.Helper()
		claims := jwt.MapClaims{"iss": "billing-agent", "sub": "billing-agent", "aud": tokenURL,
			"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "jti": broker.NewID("jti")}
		for k, v := range changes {
			if v == nil {
				delete(claims, k)
			} else {
				claims[k] = v
			}
		}
		if method == nil {
			method, key = jwt.SigningMethodEdDSA, priv
		}
		tok := jwt.NewWithClaims(method, claims)
		tok.Header["kid"] = "billing-1"
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// agentJWT is a workload identity token of agent-1 from the trusted
	// test issuer, with claims changed.
	agentJWT := func(changes map[string]any, opts ...oidctest.Option) string {
		claims := map[string]any{"sub": "agent-1", "jti": broker.NewID("jti")}
		for k, v := range changes {
			claims[k] = v
		}
		return e.idp.Token(t, claims, append([]oidctest.Option{oidctest.WithNow(now)}, opts...)...)
	}
	const billing = "template:billing invoices.read"
	triage := details(map[string]any{"type": oauth.DetailsType, "template": "triage", "intent": "triage ticket 7", "tools": []string{"tickets.read"}})
	jb := func(assertion string, kv ...string) url.Values {
		v := url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {assertion}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		if !v.Has("scope") && !v.Has("authorization_details") {
			v.Set("authorization_details", triage)
		}
		return v
	}
	cc := func(assertion string, kv ...string) url.Values {
		v := url.Values{"grant_type": {"client_credentials"}, "client_assertion_type": {oauth.ClientAssertionType}, "client_assertion": {assertion}}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		if !v.Has("scope") && !v.Has("authorization_details") {
			v.Set("scope", billing)
		}
		return v
	}
	post := func(tc badInput) response {
		body := tc.raw
		if tc.form != nil {
			body = tc.form.Encode()
		}
		req, err := http.NewRequest(http.MethodPost, tokenURL+tc.query, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
	}

	// Assertions used once already, for the replay cases: one with a jti,
	// one without (kept by its SHA-256), and a client assertion.
	usedAgent := agentJWT(nil)
	usedAgentNoJTI := agentJWT(map[string]any{"jti": nil})
	usedClient := clientJWT(nil, nil, nil)
	var taskToken string
	for _, f := range []url.Values{jb(usedAgent), jb(usedAgentNoJTI), cc(usedClient, "resource", ts.resource)} {
		r := post(badInput{form: f})
		if r.Status != http.StatusOK {
			t.Fatalf("setup: %d %s", r.Status, r.Body)
		}
		taskToken, _ = r.json(t)["access_token"].(string)
	}

	// Attackers' keys: another Ed25519 key, an EC key, and the client's
	// own public key used as an HMAC secret.
	_, otherEd, _ := ed25519.GenerateKey(rand.Reader)
	otherEC, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	dpopKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	signer, err := dpop.NewSigner(dpopKey, jose.ES256)
	if err != nil {
		t.Fatal(err)
	}
	proof := func(method, u string, at time.Time) string {
		p, err := signer.Proof(method, u, at, "")
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	usedProof := proof(http.MethodPost, tokenURL, now)
	if r := post(badInput{form: jb(agentJWT(nil)), header: map[string]string{"DPoP": usedProof}}); r.Status != http.StatusOK || r.json(t)["token_type"] != "DPoP" {
		t.Fatalf("setup (DPoP): %d %s", r.Status, r.Body)
	}

	before := e.ledger.writes.Load()
	many := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = ts.resource
		}
		return out
	}
	cases := []badInput{
		// The request itself.
		{name: "unknown grant type", form: url.Values{"grant_type": {"password"}, "username": {"a"}, "password": {"b"}}, status: 400, code: "unsupported_grant_type"},
		{name: "implicit grant type", form: url.Values{"grant_type": {"implicit"}}, status: 400, code: "unsupported_grant_type"},
		{name: "grant type in another case", form: jb(agentJWT(nil), "grant_type", "URN:IETF:PARAMS:OAUTH:GRANT-TYPE:JWT-BEARER"), status: 400, code: "invalid_request"},
		{name: "bad percent-encoding", raw: "grant_type=" + url.QueryEscape(oauth.GrantJWTBearer) + "&assertion=%zz", status: 400, code: "invalid_request"},
		{name: "oversized body", form: jb(agentJWT(nil), "intent", strings.Repeat("a", 20<<10)), status: 413, code: "invalid_request"},
		{name: "grant_type twice", form: url.Values{"grant_type": {"client_credentials", oauth.GrantJWTBearer}, "assertion": {agentJWT(nil)}}, status: 400, code: "invalid_request"},
		{name: "assertion twice", form: func() url.Values { v := jb(agentJWT(nil)); v.Add("assertion", agentJWT(nil)); return v }(), status: 400, code: "invalid_request"},
		{name: "scope twice", form: cc(clientJWT(nil, nil, nil), "scope", billing, "scope", "template:billing invoices.list"), status: 400, code: "invalid_request"},
		{name: "client_assertion twice", form: func() url.Values {
			v := cc(clientJWT(nil, nil, nil))
			v.Add("client_assertion", clientJWT(nil, nil, nil))
			return v
		}(), status: 400, code: "invalid_request"},
		{name: "assertion only in the query string", form: url.Values{"grant_type": {oauth.GrantJWTBearer}, "authorization_details": {triage}},
			query: "?assertion=" + url.QueryEscape(agentJWT(nil)), status: 400, code: "invalid_request"},
		{name: "no assertion", form: jb(""), status: 400, code: "invalid_request"},
		{name: "assertion not a JWT", form: jb("not.a.jwt"), status: 400, code: "invalid_grant"},
		{name: "jwt-bearer with a client assertion", form: jb(agentJWT(nil), "client_assertion", clientJWT(nil, nil, nil), "client_assertion_type", oauth.ClientAssertionType), status: 400, code: "invalid_request"},
		{name: "intent not UTF-8", form: cc(clientJWT(nil, nil, nil), "intent", "read\xffinvoices"), status: 400, code: "invalid_request"},
		{name: "intent over 4 KiB", form: cc(clientJWT(nil, nil, nil), "intent", strings.Repeat("i", 4097)), status: 400, code: "invalid_request"},
		{name: "intent beside authorization_details", form: jb(agentJWT(nil), "intent", "read"), status: 400, code: "invalid_request"},

		// The jwt-bearer assertion (RFC 7523 section 3).
		{name: "assertion replayed (jti)", form: jb(usedAgent), status: 400, code: "invalid_grant"},
		{name: "assertion replayed (no jti)", form: jb(usedAgentNoJTI), status: 400, code: "invalid_grant"},
		{name: "assertion for another audience", form: jb(agentJWT(map[string]any{"aud": tokenURL})), status: 400, code: "invalid_grant"},
		{name: "assertion expired", form: jb(agentJWT(map[string]any{"iat": now.Add(-time.Hour).Unix(), "exp": now.Add(-10 * time.Minute).Unix()})), status: 400, code: "invalid_grant"},
		{name: "assertion issued in the future", form: jb(agentJWT(map[string]any{"iat": now.Add(time.Hour).Unix(), "exp": now.Add(2 * time.Hour).Unix()})), status: 400, code: "invalid_grant"},
		{name: "assertion not yet valid", form: jb(agentJWT(map[string]any{"nbf": now.Add(10 * time.Minute).Unix()})), status: 400, code: "invalid_grant"},
		{name: "assertion expiring far in the future", form: jb(agentJWT(map[string]any{"exp": now.Add(365 * 24 * time.Hour).Unix()})), status: 400, code: "invalid_grant"},
		{name: "assertion without exp", form: jb(agentJWT(map[string]any{"exp": nil})), status: 400, code: "invalid_grant"},
		{name: "assertion alg none", form: jb(unsignedJWT(map[string]any{"iss": e.idp.URL(), "aud": "valet", "sub": "agent-1", "exp": now.Add(time.Minute).Unix()})), status: 400, code: "invalid_grant"},
		{name: "assertion signed by a key the issuer does not publish", form: jb(agentJWT(nil, oidctest.WithSigner(otherEC, "ES256"))), status: 400, code: "invalid_grant"},
		{name: "assertion from an untrusted issuer", form: jb(oidctest.New(t).Token(t, map[string]any{"sub": "agent-1"}, oidctest.WithNow(now))), status: 400, code: "invalid_grant"},
		{name: "a Valet task token as the assertion", form: jb(taskToken), status: 400, code: "invalid_grant"},
		{name: "a client assertion as the assertion", form: jb(clientJWT(nil, nil, nil)), status: 400, code: "invalid_grant"},

		// private_key_jwt client authentication (RFC 7523 sections 2.2, 3).
		{name: "unknown client", form: cc(clientJWT(map[string]any{"iss": "mallory", "sub": "mallory"}, nil, nil)), status: 401, code: "invalid_client"},
		{name: "client assertion replayed", form: cc(usedClient), status: 401, code: "invalid_client"},
		{name: "client assertion for another audience", form: cc(clientJWT(map[string]any{"aud": ts.resource}, nil, nil)), status: 401, code: "invalid_client"},
		{name: "client assertion expired", form: cc(clientJWT(map[string]any{"iat": now.Add(-time.Hour).Unix(), "exp": now.Add(-time.Hour).Unix()}, nil, nil)), status: 401, code: "invalid_client"},
		{name: "client assertion expiring far in the future", form: cc(clientJWT(map[string]any{"exp": now.Add(30 * 24 * time.Hour).Unix()}, nil, nil)), status: 401, code: "invalid_client"},
		{name: "client assertion without jti", form: cc(clientJWT(map[string]any{"jti": nil}, nil, nil)), status: 401, code: "invalid_client"},
		{name: "client assertion alg none", form: cc(clientJWT(nil, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType)), status: 401, code: "invalid_client"},
		{name: "client assertion HS256 keyed with the client's public key", form: cc(clientJWT(nil, jwt.SigningMethodHS256, []byte(pub))), status: 401, code: "invalid_client"},
		{name: "client assertion by another Ed25519 key", form: cc(clientJWT(nil, jwt.SigningMethodEdDSA, otherEd)), status: 401, code: "invalid_client"},
		{name: "client assertion ES256 by a key not registered", form: cc(clientJWT(nil, jwt.SigningMethodES256, otherEC)), status: 401, code: "invalid_client"},
		{name: "client assertion sub is not iss", form: cc(clientJWT(map[string]any{"sub": "other-agent"}, nil, nil)), status: 401, code: "invalid_client"},
		{name: "client secret instead of an assertion", form: url.Values{"grant_type": {"client_credentials"}, "client_id": {"billing-agent"}, "client_secret": {"s3cret"}, "scope": {billing}}, status: 401, code: "invalid_client"},
		{name: "client secret by HTTP Basic", form: url.Values{"grant_type": {"client_credentials"}, "scope": {billing}},
			header: map[string]string{"Authorization": "Basic YmlsbGluZy1hZ2VudDpzM2NyZXQ="}, status: 401, code: "invalid_client"},
		{name: "client_assertion_type wrong", form: func() url.Values {
			v := cc(clientJWT(nil, nil, nil))
			v.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
			return v
		}(), status: 401, code: "invalid_client"},
		{name: "client_id not the assertion's", form: cc(clientJWT(nil, nil, nil), "client_id", "other-agent"), status: 401, code: "invalid_client"},
		{name: "client asks for a template it may not use", form: cc(clientJWT(nil, nil, nil), "scope", "template:triage tickets.read"), status: 400, code: "unauthorized_client"},

		// The task: scope and RFC 9396 authorization_details.
		{name: "scope names no template", form: cc(clientJWT(nil, nil, nil), "scope", "invoices.read"), status: 400, code: "invalid_scope"},
		{name: "scope names a tool outside the template", form: cc(clientJWT(nil, nil, nil), "scope", "template:billing payments.send"), status: 400, code: "invalid_scope"},
		{name: "scope not UTF-8", form: cc(clientJWT(nil, nil, nil), "scope", "template:billing invoices.read\xff"), status: 400, code: "invalid_scope"},
		{name: "details and scope both", form: jb(agentJWT(nil), "authorization_details", triage, "scope", "template:triage tickets.read"), status: 400, code: "invalid_request"},
		{name: "details not JSON", form: jb(agentJWT(nil), "authorization_details", `[{"type":`), status: 400, code: "invalid_authorization_details"},
		{name: "details an object, not an array", form: jb(agentJWT(nil), "authorization_details", `{"type":"valet_task","template":"triage","intent":"x","tools":["tickets.read"]}`), status: 400, code: "invalid_authorization_details"},
		{name: "details empty", form: url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {agentJWT(nil)}, "authorization_details": {""}}, status: 400, code: "invalid_authorization_details"},
		{name: "details of another type", form: jb(agentJWT(nil), "authorization_details", `[{"type":"payment_initiation","instructedAmount":{"currency":"EUR","amount":"123.50"}}]`), status: 400, code: "invalid_authorization_details"},
		{name: "details with two entries", form: jb(agentJWT(nil), "authorization_details", "["+strings.Trim(triage, "[]")+","+strings.Trim(triage, "[]")+"]"), status: 400, code: "invalid_authorization_details"},
		{name: "details with an unknown field", form: jb(agentJWT(nil), "authorization_details", `[{"type":"valet_task","template":"triage","intent":"x","tools":["tickets.read"],"actions":["write"]}]`), status: 400, code: "invalid_authorization_details"},
		{name: "details with a tool outside the template", form: jb(agentJWT(nil), "authorization_details", `[{"type":"valet_task","template":"triage","intent":"x","tools":["payments.send"]}]`), status: 400, code: "invalid_authorization_details"},
		{name: "details ttl over the template's max", form: jb(agentJWT(nil), "authorization_details", `[{"type":"valet_task","template":"triage","intent":"x","tools":["tickets.read"],"ttl":86400}]`), status: 400, code: "invalid_authorization_details"},
		{name: "details ttl a string", form: jb(agentJWT(nil), "authorization_details", `[{"type":"valet_task","template":"triage","intent":"x","tools":["tickets.read"],"ttl":"60"}]`), status: 400, code: "invalid_authorization_details"},
		{name: "details context not an object", form: jb(agentJWT(nil), "authorization_details", `[{"type":"valet_task","template":"triage","intent":"x","tools":["tickets.read"],"context":[1]}]`), status: 400, code: "invalid_authorization_details"},

		// RFC 8707 resource.
		{name: "resource the template does not allow", form: cc(clientJWT(nil, nil, nil), "resource", "https://evil.example.com/mcp"), status: 400, code: "invalid_target"},
		{name: "resource of another template", form: jb(agentJWT(nil), "resource", "https://other.example.com"), status: 400, code: "invalid_target"},
		{name: "resource relative", form: cc(clientJWT(nil, nil, nil), "resource", "/mcp"), status: 400, code: "invalid_target"},
		{name: "resource with a fragment", form: cc(clientJWT(nil, nil, nil), "resource", ts.resource+"#x"), status: 400, code: "invalid_target"},
		{name: "too many resources", form: func() url.Values { v := cc(clientJWT(nil, nil, nil)); v["resource"] = many(9); return v }(), status: 400, code: "invalid_target"},

		// RFC 9449 DPoP at the token endpoint.
		{name: "DPoP proof not a JWT", form: jb(agentJWT(nil)), header: map[string]string{"DPoP": "not-a-proof"}, status: 400, code: "invalid_dpop_proof"},
		{name: "DPoP proof replayed", form: jb(agentJWT(nil)), header: map[string]string{"DPoP": usedProof}, status: 400, code: "invalid_dpop_proof"},
		{name: "DPoP proof stale", form: jb(agentJWT(nil)), header: map[string]string{"DPoP": proof(http.MethodPost, tokenURL, now.Add(-10*time.Minute))}, status: 400, code: "invalid_dpop_proof"},
		{name: "DPoP proof for another URL", form: jb(agentJWT(nil)), header: map[string]string{"DPoP": proof(http.MethodPost, ts.resource, now)}, status: 400, code: "invalid_dpop_proof"},
		{name: "DPoP proof for another method", form: jb(agentJWT(nil)), header: map[string]string{"DPoP": proof(http.MethodGet, tokenURL, now)}, status: 400, code: "invalid_dpop_proof"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := post(tc)
			var body map[string]any
			if err := json.Unmarshal(r.Body, &body); err != nil {
				t.Fatalf("%d, not JSON: %s", r.Status, r.Body)
			}
			if r.Status != tc.status || body["error"] != tc.code {
				t.Errorf("got %d %s, want %d %s", r.Status, r.Body, tc.status, tc.code)
			}
			if d, _ := body["error_description"].(string); d == "" {
				t.Errorf("no error_description: %s", r.Body)
			}
			if _, has := body["access_token"]; has {
				t.Errorf("a refusal carries a token")
			}
			if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control = %q", cc)
			}
			if tc.status == http.StatusUnauthorized && r.Header.Get("WWW-Authenticate") != "" && !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate %q", r.Header.Get("WWW-Authenticate"))
			}
		})
	}
	if n := e.ledger.writes.Load() - before; n != 0 {
		t.Errorf("%d refusals wrote the ledger %d times", len(cases), n)
	}
	if len(cases) < 30 {
		t.Errorf("only %d cases", len(cases))
	}
	// The endpoint still works: nothing above spent what a good request
	// needs.
	if r := post(badInput{form: cc(clientJWT(nil, nil, nil), "resource", ts.resource)}); r.Status != http.StatusOK {
		t.Errorf("a good request after the refusals: %d %s", r.Status, r.Body)
	}
}

// TestOAuthBadAssertionAlgs: every hostile identity token (alg none, HS256
// keyed with the issuer's public key, stripped or foreign signatures, bad
// claims...) as a jwt-bearer assertion is invalid_grant and writes nothing.
func TestOAuthBadAssertionAlgs(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	e, _ := newOAuthEnv(t, pub, envOptions{})
	triage := details(map[string]any{"type": oauth.DetailsType, "template": "triage", "intent": "triage ticket 7", "tools": []string{"tickets.read"}})
	form := url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {e.identity("agent-7")}, "authorization_details": {triage}}
	r := e.do(http.MethodPost, oauth.TokenPath, "", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()), false)
	taskToken, _ := r.json(t)["access_token"].(string)
	if r.Status != http.StatusOK || taskToken == "" {
		t.Fatalf("setup: %d %s", r.Status, r.Body)
	}
	before := e.ledger.writes.Load()
	cases, outbound := oidctest.HostileTokens(t, e.idp, taskToken)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			form := url.Values{"grant_type": {oauth.GrantJWTBearer}, "assertion": {c.Token}, "authorization_details": {triage}}
			r := e.do(http.MethodPost, oauth.TokenPath, "", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()), false)
			m := r.json(t)
			// A body over the size limit is 413 invalid_request; every
			// other is invalid_grant.
			status, want := http.StatusBadRequest, "invalid_grant"
			if c.Token == "" {
				want = "invalid_request"
			}
			if len(form.Encode()) > 16<<10 {
				status, want = http.StatusRequestEntityTooLarge, "invalid_request"
			}
			if r.Status != status || m["error"] != want || r.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("%d %s", r.Status, r.Body)
			}
		})
	}
	if n := e.ledger.writes.Load() - before; n != 0 {
		t.Errorf("%d ledger writes", n)
	}
	if n := outbound(); n != 0 {
		t.Errorf("%d fetches of keys a token pointed at", n)
	}
}

// details encodes authorization_details holding entries.
func details(entries ...map[string]any) string {
	b, _ := json.Marshal(entries)
	return string(b)
}

// unsignedJWT is an alg "none" JWT over claims.
func unsignedJWT(claims map[string]any) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims(claims))
	s, _ := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
	return s
}
