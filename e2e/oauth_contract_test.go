package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/openapi"
)

// TestOAuthContract: what openapi.yaml cannot check by validating answers
// alone. ServerMetadata admits fields it does not name, so every field the
// RFC 8414 document serves must be one it names; OAuthError's enum must
// hold every code the token endpoint can answer; and the token endpoint's
// success declares Cache-Control: no-store (which the validating client
// then checks on every token answer of the e2e tests).
func TestOAuthContract(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(openapi.Spec)
	if err != nil {
		t.Fatal(err)
	}
	schema := func(name string) *openapi3.Schema {
		ref := doc.Components.Schemas[name]
		if ref == nil || ref.Value == nil {
			t.Fatalf("openapi.yaml has no schema %s", name)
		}
		return ref.Value
	}

	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	e, _ := newOAuthEnv(t, pub, envOptions{})
	r := e.do(http.MethodGet, "/.well-known/oauth-authorization-server", "", "", nil, false)
	var md map[string]json.RawMessage
	if err := json.Unmarshal(r.Body, &md); r.Status != http.StatusOK || err != nil {
		t.Fatalf("metadata: %d %s", r.Status, r.Body)
	}
	props := schema("ServerMetadata").Properties
	for k := range md {
		if _, ok := props[k]; !ok {
			t.Errorf("metadata field %s is not in ServerMetadata", k)
		}
	}
	for _, k := range []string{"issuer", "token_endpoint", "grant_types_supported", "token_endpoint_auth_methods_supported"} {
		if _, ok := md[k]; !ok {
			t.Errorf("metadata lacks %s", k)
		}
	}

	var codes []string
	for _, v := range schema("OAuthError").Properties["error"].Value.Enum {
		s, _ := v.(string)
		codes = append(codes, s)
	}
	for _, c := range []string{oauth.ErrInvalidRequest, oauth.ErrInvalidClient, oauth.ErrInvalidGrant, oauth.ErrUnauthorizedClient,
		oauth.ErrUnsupportedGrantType, oauth.ErrInvalidScope, oauth.ErrInvalidTarget, oauth.ErrInvalidAuthorizationDetails,
		oauth.ErrInvalidDPoPProof, oauth.ErrTemporarilyUnavailable, oauth.ErrServerError} {
		if !slices.Contains(codes, c) {
			t.Errorf("OAuthError's enum lacks %s", c)
		}
	}

	op := doc.Paths.Find(oauth.TokenPath)
	if op == nil || op.Post == nil {
		t.Fatalf("openapi.yaml has no POST %s", oauth.TokenPath)
	}
	ok := op.Post.Responses.Status(http.StatusOK)
	if ok == nil || ok.Value == nil {
		t.Fatal("POST /v1/token has no 200")
	}
	h := ok.Value.Headers["Cache-Control"]
	if h == nil || h.Value == nil || !h.Value.Required || h.Value.Schema == nil || !slices.Contains(h.Value.Schema.Value.Enum, any("no-store")) {
		t.Errorf("POST /v1/token 200 does not require Cache-Control: no-store")
	}
	// The form a client posts names every parameter the endpoint reads.
	form := schema("OAuthTokenForm").Properties
	for _, p := range []string{"grant_type", "assertion", "client_assertion_type", "client_assertion", "client_id", "authorization_details", "scope", "intent", "resource"} {
		if _, ok := form[p]; !ok {
			t.Errorf("OAuthTokenForm lacks %s", p)
		}
	}
}
