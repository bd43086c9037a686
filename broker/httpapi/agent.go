package httpapi

import (
	"net/http"
	"strings"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/delegation"
)

// token is RFC 8693 token exchange: delegation to a sub-agent.
func (a *api) token(w http.ResponseWriter, r *http.Request) {
	if err := requireContentType(r, "application/x-www-form-urlencoded"); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := r.ParseForm(); err != nil {
		a.writeError(w, r, &broker.Error{Code: broker.CodeInvalid, Message: "malformed form body", Err: err})
		return
	}
	req, err := delegation.DecodeTokenExchange(r.PostForm)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	req.Proof, req.Method, req.URL = r.Header.Get("DPoP"), r.Method, a.requestURL(r)
	task, minted, err := a.opts.Delegation.Delegate(r.Context(), req)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	tokenType := "Bearer"
	if task.JKT != "" {
		tokenType = "DPoP"
	}
	w.Header().Set("Cache-Control", "no-store")
	m := minted[0]
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token":      m.Material["access_token"],
		"issued_token_type": delegation.TokenTypeAccessToken,
		"token_type":        tokenType,
		"expires_in":        int64(m.ExpiresAt.Sub(m.IssuedAt).Seconds()),
		"task":              task,
	})
}

// requestURL is the URL a DPoP proof must name for r: Valet's public URL
// and the request's path.
func (a *api) requestURL(r *http.Request) string {
	return strings.TrimSuffix(a.opts.Issuer, "/") + r.URL.EscapedPath()
}

// addAgentClaims puts the act chain (RFC 8693 section 4.1) and cnf (RFC
// 7800) of a token into its introspection answer.
func addAgentClaims(body map[string]any, c broker.TaskClaims) {
	if len(c.Act) > 0 {
		var act map[string]any
		for i := len(c.Act) - 1; i >= 0; i-- {
			next := map[string]any{"sub": c.Act[i]}
			if act != nil {
				next["act"] = act
			}
			act = next
		}
		body["act"] = act
	}
	if c.JKT != "" {
		body["cnf"] = map[string]any{"jkt": c.JKT}
	}
}
