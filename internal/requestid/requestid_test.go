package requestid

import (
	"context"
	"strings"
	"testing"
)

// TestWithDropsInvalid (from httpapi's TestWithRequestIDDropsInvalid):
// whoever sets a request id in a context (HTTP or not), one outside the
// grammar never reaches logs or audit; one inside it travels unchanged.
func TestWithDropsInvalid(t *testing.T) {
	for _, tc := range []struct {
		name, id, want string
	}{
		{"plain", "req-1.A_b", "req-1.A_b"},
		{"longest", strings.Repeat("a", MaxLen), strings.Repeat("a", MaxLen)},
		{"too long", strings.Repeat("a", MaxLen+1), ""},
		{"empty", "", ""},
		{"line break", "x\ny", ""},
		{"space", "x y", ""},
		{"non-ASCII", "idé", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := From(With(context.Background(), tc.id)); got != tc.want {
				t.Fatalf("From(With(%q)) = %q, want %q", tc.id, got, tc.want)
			}
		})
	}
	if got := From(context.Background()); got != "" {
		t.Fatalf("From without an id = %q", got)
	}
}
