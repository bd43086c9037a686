package wire

import (
	"errors"
	"strings"
	"testing"

	"github.com/valet-dev/valet/broker"
)

// FuzzDecodeDeclaration: any body either decodes to a declaration that
// meets every invariant the Service relies on, or fails with a client error
// that names what was wrong. It never panics.
func FuzzDecodeDeclaration(f *testing.F) {
	for _, s := range []string{
		`{"template":"t","intent":"do it","tools":["a.b"]}`,
		`{"template":"t","intent":"do it","tools":["a.b","c"],"ttl_seconds":60,"context":{"k":[1,2,{"x":null}]}}`,
		`{"template":"t","intent":"x","tools":["a","a"]}`,
		`{"template":"t","intent":"x","tools":[]}`,
		`{"template":"t","intent":"x","tools":["a"],"ttl_seconds":-1}`,
		`{"template":"t","intent":"x","tools":["a"],"ttl_seconds":1e400}`,
		`{"template":"t","intent":"x","tools":["a"],"extra":1}`,
		`{"template":"t","intent":"x","tools":["a"]}{}`,
		`{"template":"t","intent":"x","tools":["a"],"context":[]}`,
		`{"template":"\u0000","intent":"\ud800","tools":["a"]}`,
		`[]`, `null`, ``, `{`, `"str"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := DecodeDeclaration(strings.NewReader(string(body)))
		if err != nil {
			var e *broker.Error
			if !errors.As(err, &e) || (e.Code != broker.CodeInvalid && e.Code != broker.CodeTooLarge) || e.Message == "" {
				t.Fatalf("error is not a client error with a message: %#v", err)
			}
			return
		}
		if d.Template == "" || strings.TrimSpace(d.Intent) == "" || len(d.Tools) == 0 || len(d.Tools) > broker.MaxTools {
			t.Fatalf("accepted a declaration missing a required part: %+v", d)
		}
		seen := map[string]bool{}
		for _, tool := range d.Tools {
			if tool == "" || seen[tool] {
				t.Fatalf("accepted an empty or repeated tool: %q", d.Tools)
			}
			seen[tool] = true
		}
		if d.TTL < 0 || d.TTL > broker.MaxTTL {
			t.Fatalf("accepted ttl %s", d.TTL)
		}
	})
}
