package toolevents

import (
	"strings"
	"testing"
)

// TestBodyPreview: the rollback plan's preview of an undo body hides the
// values of secret-named fields (JSON, nested, and form bodies), escapes
// terminal controls and is bounded.
func TestBodyPreview(t *testing.T) {
	for _, c := range []struct{ name, body, ct, want string }{
		{"json", `{"undo_key":"k1","comment":"c_1","n":12345678901234567890}`, "application/json",
			`{"comment":"c_1","n":12345678901234567890,"undo_key":"[redacted]"}`},
		{"nested json", `{"items":[{"id":1,"Api-Token":"t"}],"auth":{"x":"y"}}`, "",
			`{"auth":"[redacted]","items":[{"Api-Token":"[redacted]","id":1}]}`},
		{"form", "id=7&password=p&sig=s", "application/x-www-form-urlencoded; charset=utf-8",
			"id=7&password=%5Bredacted%5D&sig=%5Bredacted%5D"},
		{"text with controls", "delete 7\x1b[2J\u202e", "text/plain", `delete 7\x1b[2J\u202e`},
		{"json with controls", `{"note":"\u001b]0;x\u0007 \u202e"}`, "", `{"note":"\u001b]0;x\u0007 \u202e"}`},
		{"two json values are text", `{"a":1} {"key":"k"}`, "", `{"a":1} {"key":"[redacted]"}`},
		{"text assignments", "id=7 undo_key=abc&x=1\nAuthorization: Bearer xyz", "text/plain",
			`id=7 undo_key=[redacted]&x=1\nAuthorization: [redacted]`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := bodyPreview(c.body, c.ct); got != c.want {
				t.Fatalf("bodyPreview = %s\nwant           %s", got, c.want)
			}
		})
	}
	long := bodyPreview(strings.Repeat("a", 9000), "")
	if r := []rune(long); len(r) != maxBodyPreview || r[len(r)-1] != '…' {
		t.Fatalf("a long body's preview has %d runes", len(r))
	}
}

// TestRollbackAllowedHosts: an undo webhook is called only when its host
// (or host:port) is listed, compared without case; nothing is by default.
func TestRollbackAllowedHosts(t *testing.T) {
	c := RollbackConfig{AllowedHosts: []string{" Tickets.Example ", "undo.example:8443"}}
	c.init()
	for raw, want := range map[string]bool{
		"https://tickets.example/undo/7":    true,
		"https://TICKETS.example:9000/x":    true,
		"https://undo.example:8443/x":       true,
		"https://undo.example/x":            false,
		"https://evil.example/x":            false,
		"https://tickets.example.evil.io/x": false,
		"not a url":                         false,
	} {
		if got := c.allowed(raw); got != want {
			t.Errorf("allowed(%q) = %v", raw, got)
		}
	}
	var none RollbackConfig
	none.init()
	if none.allowed("https://tickets.example/undo") || none.Timeout != maxUndoTimeout || none.Client == nil {
		t.Fatalf("defaults: %+v", none)
	}
}
