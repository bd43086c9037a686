package verify

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
)

// ProtectedResourcePath is where an RFC 9728 protected resource publishes
// its metadata (before the resource's own path, if it has one).
const ProtectedResourcePath = "/.well-known/oauth-protected-resource"

// dpopAlgs are the algorithms of the DPoP proofs this verifier checks.
var dpopAlgs = []string{"EdDSA", "ES256"}

// ResourceMetadataURL is where this tool server's RFC 9728 metadata is
// served (section 3.1: the well-known path inserted between the host and
// the path of the resource identifier, the Audience), or "" when the
// Audience is not an http(s) URL: then clients are not pointed at any.
func (v *Verifier) ResourceMetadataURL() string {
	u, err := url.Parse(v.cfg.Audience)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return ""
	}
	return u.Scheme + "://" + u.Host + ProtectedResourcePath + strings.TrimSuffix(u.EscapedPath(), "/")
}

// ProtectedResourceMetadata serves the RFC 9728 metadata of this tool
// server: the resource (the Audience its tokens must name), Valet as its
// authorization server, the header as the one way to send a token, and the
// DPoP algorithms it checks. Mount it at the path of ResourceMetadataURL.
func (v *Verifier) ProtectedResourceMetadata() http.Handler {
	md := map[string]any{
		"resource":                          v.cfg.Audience,
		"authorization_servers":             []string{v.cfg.Issuer},
		"bearer_methods_supported":          []string{"header"},
		"dpop_signing_alg_values_supported": dpopAlgs,
		"dpop_bound_access_tokens_required": false,
	}
	// RFC 9728 section 2: scopes_supported is optional, and an empty list
	// would tell clients no scope exists; leave it out.
	if len(v.cfg.Scopes) > 0 {
		md["scopes_supported"] = v.cfg.Scopes
	}
	body, _ := json.Marshal(md)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=300")
		_, _ = w.Write(body)
	})
}

// challenge is the WWW-Authenticate header of a refusal (RFC 6750 section
// 3, RFC 9449 section 7.1, RFC 9728 section 5.1): a 401 names the metadata
// and, when a token was sent, invalid_token (on the scheme it came with);
// a 403 is insufficient_scope with the scope that was needed.
func (v *Verifier) challenge(r *http.Request, e *Error) string {
	md := v.ResourceMetadataURL()
	params := func(kv ...string) string {
		var parts []string
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] != "" {
				parts = append(parts, kv[i]+"="+quote(kv[i+1]))
			}
		}
		return strings.Join(parts, ", ")
	}
	raw, scheme := tokenOf(r)
	switch e.Status {
	case http.StatusUnauthorized:
		bearerErr, dpopErr := "", ""
		if raw != "" {
			if strings.EqualFold(scheme, "DPoP") {
				dpopErr = "invalid_token"
			} else {
				bearerErr = "invalid_token"
			}
		}
		bearer := strings.TrimSuffix("Bearer "+params("resource_metadata", md, "error", bearerErr), " ")
		return bearer + ", DPoP " + params("algs", strings.Join(dpopAlgs, " "), "resource_metadata", md, "error", dpopErr)
	case http.StatusForbidden:
		s := "Bearer"
		if strings.EqualFold(scheme, "DPoP") {
			s = "DPoP"
		}
		return s + " " + params("error", "insufficient_scope", "scope", e.Scope, "resource_metadata", md)
	}
	return ""
}

// quote is an RFC 9110 quoted-string.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// validScopeToken reports whether s can stand in a scope value (RFC 6749
// section 3.3 scope-token): printable ASCII without space, '"' or '\\'.
func validScopeToken(s string) bool {
	return s != "" && !strings.ContainsFunc(s, func(r rune) bool { return r <= 0x20 || r >= 0x7f || r == '"' || r == '\\' })
}
