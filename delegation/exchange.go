package delegation

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/wire"
)

// Token exchange (RFC 8693) parameters and types Valet accepts.
const (
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeIDToken       = "urn:ietf:params:oauth:token-type:id_token"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
)

// Request is a token exchange as the agent sent it.
type Request struct {
	SubjectToken string
	ActorToken   string
	Tools        []string
	Audiences    []string
	Scopes       []string
	TTL          time.Duration // 0: as long as the parent has left
	// Proof is the request's DPoP header, Method and URL what it must
	// name; set by the HTTP layer.
	Proof       string
	Method, URL string
}

// DecodeTokenExchange reads the form of POST /v1/token. A missing subject or
// actor token is an error, never a fallback to the caller's identity.
func DecodeTokenExchange(form url.Values) (Request, error) {
	for k, v := range form {
		if len(v) > 1 && k != "resource" && k != "audience" {
			return Request{}, broker.InvalidField(k, "parameter %s is given more than once", k)
		}
	}
	switch {
	case form.Get("grant_type") != GrantTypeTokenExchange:
		return Request{}, broker.InvalidField("grant_type", "grant_type must be %s", GrantTypeTokenExchange)
	case form.Get("subject_token") == "":
		return Request{}, broker.InvalidField("subject_token", "subject_token is required: the parent task token")
	case form.Get("subject_token_type") != TokenTypeAccessToken:
		return Request{}, broker.InvalidField("subject_token_type", "subject_token_type must be %s", TokenTypeAccessToken)
	case form.Get("actor_token") == "":
		return Request{}, broker.InvalidField("actor_token", "actor_token is required: the sub-agent's identity token")
	case form.Get("actor_token_type") != TokenTypeIDToken && form.Get("actor_token_type") != TokenTypeJWT:
		return Request{}, broker.InvalidField("actor_token_type", "actor_token_type must be %s or %s", TokenTypeIDToken, TokenTypeJWT)
	}
	if rt := form.Get("requested_token_type"); rt != "" && rt != TokenTypeAccessToken {
		return Request{}, broker.InvalidField("requested_token_type", "requested_token_type must be %s", TokenTypeAccessToken)
	}
	r := Request{SubjectToken: form.Get("subject_token"), ActorToken: form.Get("actor_token")}
	var err error
	if r.Tools, err = spaceList(form.Get("tools"), "tools", broker.MaxTools, broker.MaxToolName); err != nil {
		return r, err
	}
	if len(r.Tools) == 0 {
		return r, broker.InvalidField("tools", "tools is required: the space-separated tools the sub-agent needs")
	}
	if err := wire.CheckToolNames("tools", r.Tools); err != nil {
		return r, err
	}
	if r.Scopes, err = spaceList(form.Get("scope"), "scope", 64, 256); err != nil {
		return r, err
	}
	if !form.Has("scope") {
		r.Scopes = nil // no scope asked for: the parent's, as far as the template still allows
	}
	for _, k := range []string{"audience", "resource"} {
		for i, a := range form[k] {
			if a == "" || len(a) > 512 || !utf8.ValidString(a) {
				return r, broker.InvalidField(fmt.Sprintf("%s[%d]", k, i), "%s must be a non-empty string of at most 512 bytes", k)
			}
			if !slices.Contains(r.Audiences, a) {
				r.Audiences = append(r.Audiences, a)
			}
		}
	}
	if v := form.Get("ttl_seconds"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 || n > int64(broker.MaxTTL/time.Second) {
			return r, broker.InvalidField("ttl_seconds", "ttl_seconds must be a whole number from 1 to %d", int64(broker.MaxTTL/time.Second))
		}
		r.TTL = time.Duration(n) * time.Second
	}
	return r, nil
}

// spaceList splits a space-separated parameter, refusing duplicates.
func spaceList(v, field string, maxItems, maxLen int) ([]string, error) {
	items := strings.Fields(v)
	if len(items) > maxItems {
		return nil, broker.InvalidField(field, "%s may list at most %d entries", field, maxItems)
	}
	for i, it := range items {
		if len(it) > maxLen || !utf8.ValidString(it) {
			return nil, broker.InvalidField(fmt.Sprintf("%s[%d]", field, i), "%s entry %d must be valid UTF-8 of at most %d bytes", field, i, maxLen)
		}
		if slices.Contains(items[:i], it) {
			return nil, broker.InvalidField(field, "%s lists %q twice", field, it)
		}
	}
	return items, nil
}
