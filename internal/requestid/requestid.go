// Package requestid carries the HTTP request id through a context, for
// logs, audit events and error bodies, and holds the strict grammar of
// the ids Valet accepts from a client.
package requestid

import "context"

// MaxLen is the longest request id Valet keeps: ids reach every audit
// event, log line and error body, so their grammar is strict.
const MaxLen = 64

// Valid reports whether id is 1 to MaxLen characters of [A-Za-z0-9._-],
// the only request ids Valet accepts from a client.
func Valid(id string) bool {
	if id == "" || len(id) > MaxLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

type ctxKey struct{}

// With attaches the HTTP request id to ctx for logs and audit. An id
// outside Valid's grammar is dropped, whoever passes it.
func With(ctx context.Context, id string) context.Context {
	if !Valid(id) {
		id = ""
	}
	return context.WithValue(ctx, ctxKey{}, id)
}

// From returns the request id attached to ctx, or "".
func From(ctx context.Context) string {
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}
