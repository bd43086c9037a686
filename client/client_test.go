package client

import (
	"errors"
	"strings"
	"testing"
)

// TestRefusal: Valet's error body, an OAuth error body and a body of
// neither shape each become an *Error; the last is quoted, bounded.
func TestRefusal(t *testing.T) {
	for _, c := range []struct {
		name   string
		status int
		body   string
		want   Error
	}{
		{"valet error", 403, `{"error":"forbidden","message":"tool \"x\" is not allowed","rule":"tools","field":"tools[0]","request_id":"req-1"}`,
			Error{Status: 403, Code: "forbidden", Message: `tool "x" is not allowed`, Rule: "tools", Field: "tools[0]", RequestID: "req-1"}},
		{"oauth error", 400, `{"error":"invalid_grant","error_description":"the assertion was used before","request_id":"req-2"}`,
			Error{Status: 400, Code: "invalid_grant", Message: "the assertion was used before", RequestID: "req-2"}},
		{"not json", 502, "<html>bad gateway</html>", Error{Status: 502, Code: "http_502", Message: `"<html>bad gateway</html>"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := refusal(c.status, []byte(c.body))
			var e *Error
			if !errors.As(err, &e) || *e != c.want {
				t.Fatalf("refusal = %#v, want %#v", err, c.want)
			}
		})
	}
	long := refusal(500, []byte(strings.Repeat("x", 10000)))
	if len(long.Error()) > 400 {
		t.Errorf("an unexpected body is quoted in full: %d bytes", len(long.Error()))
	}
	if !errors.Is(refusal(409, []byte(`{"error":"conflict","message":"m"}`)), ErrConflict) {
		t.Error("a conflict is not errors.Is ErrConflict")
	}
	if errors.Is(refusal(409, []byte(`{"error":"conflict","message":"m"}`)), ErrNotFound) {
		t.Error("a conflict is errors.Is ErrNotFound")
	}
}
