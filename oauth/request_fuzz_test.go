package oauth

import (
	"net/url"
	"testing"
)

// FuzzDecodeRequest: whatever the form, decoding answers a task that has a
// template, an intent and tools, or an RFC 6749 error; it never panics.
func FuzzDecodeRequest(f *testing.F) {
	f.Add("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c&scope=template%3Atriage+tickets.read")
	f.Add(`grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=x&authorization_details=[{"type":"valet_task","template":"t","intent":"do it","tools":["a"],"ttl":60}]`)
	f.Add("grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=x&scope=template%3Ab+c&resource=https%3A%2F%2Fa.example")
	f.Add("grant_type=client_credentials&scope=template:a+template:b")
	f.Fuzz(func(t *testing.T, raw string) {
		form, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		req, oerr := decodeRequest(form)
		if oerr != nil {
			if oerr.Code == "" || oerr.Description == "" || oerr.Status < 400 {
				t.Fatalf("error without code, description or status: %+v", oerr)
			}
			return
		}
		if req.assertion == "" {
			t.Fatalf("accepted without an assertion: %q", raw)
		}
		if !req.scopeInAssertion && (req.decl.Template == "" || req.decl.Intent == "" || len(req.decl.Tools) == 0) {
			t.Fatalf("accepted an incomplete task: %+v", req.decl)
		}
	})
}
