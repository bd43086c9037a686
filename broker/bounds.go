package broker

import (
	"strconv"
	"unicode/utf8"
)

// Bounds on attacker-influenced text that reaches audit events, log lines
// and error bodies. Each is documented in docs/security.md.
const (
	// MaxAuditString is the longest string an audit event keeps in any
	// field or detail value; a longer one is cut and marked (see Bound).
	MaxAuditString = 1024
	// MaxAuditList is the most items an audit event keeps in one list
	// (tools, credential ids, ...); the rest are counted, not kept.
	MaxAuditList = 64
	// MaxAuditDepth is how deep nested detail values are kept.
	MaxAuditDepth = 4
	// MaxLoggedPath bounds a request path or method in log lines and
	// error messages.
	MaxLoggedPath = 256
)

// Bound returns s cut to at most n bytes (on a rune boundary) followed by a
// marker saying how many bytes were dropped, or s itself when it fits.
func Bound(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…[+" + strconv.Itoa(len(s)-cut) + " bytes]"
}
