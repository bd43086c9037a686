package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/dpop"
)

func newDPoPSigner(t *testing.T) *dpop.Signer {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := dpop.NewSigner(k, jose.ES256)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestDPoP: a declaration with a DPoP proof binds the task token to the
// key (cnf.jkt); the tool server then refuses it without a proof, with a
// proof for another URL or method, with a reused proof, with a proof by
// another key, and as a plain Bearer token.
func TestDPoP(t *testing.T) {
	e := newEnv(t, envOptions{templates: agentTemplates})
	ts, _, _ := newToolServer(t, e, false)
	key := newDPoPSigner(t)

	proof, err := key.Proof(http.MethodPost, e.srv.URL+"/v1/tasks", e.clock.Now(), "")
	if err != nil {
		t.Fatal(err)
	}
	body := `{"template":"crew","intent":"work on ticket 4521","tools":["tickets.read"]}`
	declare := func(proof string) response {
		req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/v1/tasks", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+e.identity("agent-a"))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("DPoP", proof)
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
	}
	r := declare(proof)
	if r.Status != http.StatusCreated {
		t.Fatalf("declare with DPoP: %d %s", r.Status, r.Body)
	}
	m := r.json(t)
	tok := m["credentials"].([]any)[0].(map[string]any)["access_token"].(string)
	if m["task"].(map[string]any)["jkt"] != key.JKT() {
		t.Fatalf("task not bound to the key: %v", m["task"])
	}
	if in := e.introspect(tok); in["cnf"].(map[string]any)["jkt"] != key.JKT() {
		t.Fatalf("introspection lacks cnf.jkt: %v", in)
	}
	if r := declare(proof); r.Status != http.StatusUnauthorized {
		t.Fatalf("declaration with a replayed proof: %d %s", r.Status, r.Body)
	}

	url := ts.URL + "/tickets/1"
	send := func(scheme, proof string) int {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", scheme+" "+tok)
		if proof != "" {
			req.Header.Set("DPoP", proof)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	mk := func(s *dpop.Signer, method, u, at string) string {
		p, err := s.Proof(method, u, e.clock.Now(), at)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := mk(key, http.MethodGet, url, tok)
	if s := send("DPoP", good); s != 200 {
		t.Fatalf("a good proof: %d", s)
	}
	cases := []struct {
		name, scheme, proof string
	}{
		{"no proof", "DPoP", ""},
		{"as a Bearer token", "Bearer", mk(key, http.MethodGet, url, tok)},
		{"a proof for another URL", "DPoP", mk(key, http.MethodGet, ts.URL+"/tickets/2", tok)},
		{"a proof for another method", "DPoP", mk(key, http.MethodPost, url, tok)},
		{"a reused proof", "DPoP", good},
		{"a proof by another key", "DPoP", mk(newDPoPSigner(t), http.MethodGet, url, tok)},
		{"a proof for another token", "DPoP", mk(key, http.MethodGet, url, tok+"x")},
	}
	for _, c := range cases {
		if s := send(c.scheme, c.proof); s != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", c.name, s)
		}
	}
}
