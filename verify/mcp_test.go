package verify_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/canonical"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/verify"
)

// mcpToken mints a task token of template "support" granting tickets.read
// and, as a sensitive tool, tickets.delete.
func (v *valet) mcpToken(t *testing.T, jti string) string {
	return v.sign(t, "at+jwt", jwt.MapClaims{
		"iss": v.srv.URL, "aud": audience, "sub": "agent-a", "jti": jti, "task_id": "tsk_" + jti, "template": "support",
		"tools": []string{"tickets.read"}, "action_tools": []string{"tickets.delete"},
		"iat": v.now().Unix(), "exp": v.now().Add(10 * time.Minute).Unix(),
	})
}

// actionToken mints an action token for task tsk_<jti>, tool and args.
func (v *valet) actionToken(t *testing.T, jti, tool, args string) string {
	canon, err := canonical.Args([]byte(args))
	if err != nil {
		t.Fatal(err)
	}
	return v.sign(t, "action+jwt", jwt.MapClaims{
		"iss": v.srv.URL, "aud": audience, "sub": "agent-a", "jti": "act_" + jti + tool + args, "task_id": "tsk_" + jti,
		"tool": tool, "args_hash": canonical.Hash(canon), "iat": v.now().Unix(), "exp": v.now().Add(time.Minute).Unix(),
	})
}

func (v *valet) sign(t *testing.T, typ string, claims jwt.MapClaims) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	tok.Header["typ"], tok.Header["kid"] = typ, v.kid
	s, err := tok.SignedString(v.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// mcpServer is a stand-in MCP server behind the middleware: it answers
// with the tool the middleware saw in the claims' context and the body it
// was passed.
func mcpServer(t *testing.T, ver *verify.Verifier) http.Handler {
	return ver.MCP(verify.MCPOptions{MaxBody: 4096})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := verify.FromContext(r.Context())
		body, _ := io.ReadAll(r.Body)
		if !ok {
			t.Error("no claims in the handler's context")
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"task_id": c.TaskID, "body": string(body)})
	}))
}

func call(tool string) string {
	return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"` + tool + `","arguments":{"ticket":"7"}}}`
}

// TestMCPMiddleware: the middleware's answers to the messages of a
// Streamable HTTP MCP client, by method, tool, headers and token.
func TestMCPMiddleware(t *testing.T) {
	c := testkit.NewClock(time.Unix(1_800_000_000, 0))
	v := newValet(t, c.Now)
	ver := newVerifier(t, v, c.Now)
	h := mcpServer(t, ver)
	good := v.mcpToken(t, "m1")
	revoked := v.mcpToken(t, "m2")
	v.revoke("m2", "1-0")
	cases := []struct {
		name        string
		method      string
		token       string
		body        string
		headers     map[string]string
		status      int
		challenge   string // substring of WWW-Authenticate
		noChallenge bool   // no WWW-Authenticate at all
		message     string // substring of the body
	}{
		{name: "no token", body: call("tickets.read"), status: 401,
			challenge: `Bearer resource_metadata="https://tools.example.com/.well-known/oauth-protected-resource"`},
		{name: "bad token", token: "x.y.z", body: call("tickets.read"), status: 401, challenge: `error="invalid_token"`},
		{name: "revoked task", token: revoked, body: `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, status: 401},
		{name: "initialize", token: good, body: `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`, status: 200},
		{name: "tools/list", token: good, body: `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`, status: 200},
		{name: "notification", token: good, body: `{"jsonrpc":"2.0","method":"notifications/initialized"}`, status: 200},
		{name: "response to the server", token: good, body: `{"jsonrpc":"2.0","id":3,"result":{}}`, status: 200},
		{name: "GET stream", method: http.MethodGet, token: good, status: 200},
		{name: "granted tool", token: good, body: call("tickets.read"), status: 200, message: "tsk_m1"},
		{name: "granted tool, headers agree", token: good, body: call("tickets.read"),
			headers: map[string]string{"Mcp-Method": "tools/call", "Mcp-Name": "tickets.read"}, status: 200},
		{name: "granted tool, base64 header", token: good, body: call("tickets.read"),
			headers: map[string]string{"Mcp-Name": "=?base64?dGlja2V0cy5yZWFk?="}, status: 200},
		{name: "tool not granted", token: good, body: call("tickets.comment"), status: 403,
			challenge: `error="insufficient_scope", scope="template:support tickets.comment"`, message: `"id":1,`},
		{name: "granted tool revoked", token: revoked, body: call("tickets.read"), status: 401},
		{name: "Mcp-Name names another tool", token: good, body: call("tickets.comment"),
			headers: map[string]string{"Mcp-Name": "tickets.read"}, status: 400, message: "Mcp-Name"},
		{name: "Mcp-Method names another method", token: good, body: call("tickets.read"),
			headers: map[string]string{"Mcp-Method": "tools/list"}, status: 400, message: "Mcp-Method"},
		{name: "Mcp-Name without a name in the body", token: good, body: `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`,
			headers: map[string]string{"Mcp-Name": "tickets.read"}, status: 400},
		{name: "duplicate name", token: good, body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tickets.read","name":"tickets.comment"}}`, status: 400, message: "twice"},
		{name: "name in another case", token: good, body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tickets.read","Name":"tickets.comment"}}`, status: 400},
		{name: "duplicate method", token: good, body: `{"jsonrpc":"2.0","id":1,"method":"tools/list","METHOD":"tools/call","params":{"name":"tickets.comment"}}`, status: 400},
		{name: "batch", token: good, body: `[` + call("tickets.read") + `]`, status: 400, message: "batch"},
		{name: "not JSON", token: good, body: `{"jsonrpc":`, status: 400},
		{name: "trailing data", token: good, body: call("tickets.read") + call("tickets.comment"), status: 400},
		{name: "tools/call without a name", token: good, body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}`, status: 400},
		{name: "too long", token: good, body: `{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":"` + strings.Repeat("a", 5000) + `"}}`, status: 413},
		{name: "sensitive tool without an action token", token: good, body: call("tickets.delete"), status: 403, message: "needs an action token", noChallenge: true},
		{name: "sensitive tool with its action token", token: good, body: call("tickets.delete"),
			headers: map[string]string{"Valet-Action": v.actionToken(t, "m1", "tickets.delete", `{"ticket":"7"}`)}, status: 200},
		{name: "sensitive tool, action token for other arguments", token: good, body: call("tickets.delete"),
			headers: map[string]string{"Valet-Action": v.actionToken(t, "m1", "tickets.delete", `{"ticket":"8"}`)}, status: 403, message: "other arguments", noChallenge: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.method
			if m == "" {
				m = http.MethodPost
			}
			r := httptest.NewRequest(m, "/mcp", strings.NewReader(tc.body))
			if tc.token != "" {
				r.Header.Set("Authorization", "Bearer "+tc.token)
			}
			for k, val := range tc.headers {
				r.Header.Set(k, val)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if ch := w.Header().Get("WWW-Authenticate"); !strings.Contains(ch, tc.challenge) || (tc.noChallenge && ch != "") {
				t.Errorf("challenge %q lacks %q (or should be absent: %v)", ch, tc.challenge, tc.noChallenge)
			}
			if !strings.Contains(w.Body.String(), tc.message) {
				t.Errorf("body %s lacks %q", w.Body, tc.message)
			}
			if tc.status == 200 && m == http.MethodPost && !strings.Contains(w.Body.String(), "jsonrpc") {
				t.Errorf("the handler did not get the body: %s", w.Body)
			}
		})
	}
	// An action token works once.
	r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(call("tickets.delete")))
	r.Header.Set("Authorization", "Bearer "+good)
	r.Header.Set("Valet-Action", v.actionToken(t, "m1", "tickets.delete", `{"ticket":"7"}`))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "used already") {
		t.Errorf("action token replayed: %d %s", w.Code, w.Body)
	}
}

// TestParseMCP: what the parser reads, and what it refuses.
func TestParseMCP(t *testing.T) {
	cases := []struct {
		name, body   string
		method, tool string
		args         string
		err          string
	}{
		{name: "tools/call", body: call("a.b"), method: "tools/call", tool: "a.b", args: `{"ticket":"7"}`},
		{name: "escaped name", body: `{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"\u0061.b"}}`, method: "tools/call", tool: "a.b"},
		{name: "resources/read", body: `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}}`, method: "resources/read", tool: "file:///x"},
		{name: "prompts/get", body: `{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}`, method: "prompts/get", tool: "p"},
		{name: "response", body: `{"jsonrpc":"2.0","id":1,"result":{"a":[1,{"b":2}]}}`},
		{name: "null arguments", body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":null}}`, method: "tools/call", tool: "a"},
		{name: "wrong version", body: `{"jsonrpc":"1.0","id":1,"method":"tools/list"}`, err: "2.0"},
		{name: "method not a string", body: `{"jsonrpc":"2.0","id":1,"method":7}`, err: "method must be a string"},
		{name: "empty method", body: `{"jsonrpc":"2.0","id":1,"method":""}`, err: "empty"},
		{name: "params not an object", body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["a"]}`, err: "params"},
		{name: "name not a string", body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":1}}`, err: "name must be a string"},
		{name: "duplicate argument", body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"t":"1","T":"2"}}}`, err: "twice"},
		{name: "key in another case", body: `{"jsonrpc":"2.0","id":1,"Method":"tools/call","params":{"name":"a"}}`, err: "must be written"},
		{name: "deep", body: `{"jsonrpc":"2.0","id":1,"result":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, err: "deeper"},
		{name: "invalid UTF-8", body: "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\xff\"}}", err: "UTF-8"},
		{name: "long name", body: call(strings.Repeat("n", 600)), err: "longer"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := verify.ParseMCP([]byte(tc.body))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || m.Method != tc.method || m.Name != tc.tool || string(m.Arguments) != tc.args {
				t.Fatalf("%+v %v", m, err)
			}
		})
	}
}

// FuzzParseMCP: the parser never panics, and whatever it accepts, a plain
// encoding/json decoder (the way an MCP server reads the message) reads the
// same method, tool and arguments from.
func FuzzParseMCP(f *testing.F) {
	for _, s := range []string{call("tickets.read"), `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","Name":"b"}}`, `[{"jsonrpc":"2.0"}]`,
		`{"jsonrpc":"2.0","id":1,"result":{}}`, `{"jsonrpc":"2.0","method":"resources/read","params":{"uri":"x"}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		m, err := verify.ParseMCP(body)
		if err != nil {
			return
		}
		var plain struct {
			Method string `json:"method"`
			Params struct {
				Name      string          `json:"name"`
				URI       string          `json:"uri"`
				Arguments json.RawMessage `json:"arguments"`
			} `json:"params"`
		}
		if err := json.Unmarshal(body, &plain); err != nil {
			// ParseMCP accepted what a decoder refuses: only possible for
			// a params it does not read (such as a list) on other methods.
			if m.Method == "tools/call" {
				t.Fatalf("accepted %q, encoding/json refuses it: %v", body, err)
			}
			return
		}
		if plain.Method != m.Method {
			t.Fatalf("method %q, encoding/json reads %q", m.Method, plain.Method)
		}
		if m.Method == "tools/call" {
			args := plain.Params.Arguments
			if string(args) == "null" {
				args = nil
			}
			if plain.Params.Name != m.Name || string(args) != string(m.Arguments) {
				t.Fatalf("tool %q %s, encoding/json reads %q %s", m.Name, m.Arguments, plain.Params.Name, args)
			}
		}
	})
}

// BenchmarkParseMCP: the cost of the strict parse of a typical tools/call
// (run with -benchmem; compare with BenchmarkPlainDecode in the same run).
func BenchmarkParseMCP(b *testing.B) {
	body := []byte(`{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"tickets.comment","arguments":{"ticket":"4521","text":"` +
		strings.Repeat("x", 512) + `"},"_meta":{"progressToken":7}}}`)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := verify.ParseMCP(body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPlainDecode is the baseline for BenchmarkParseMCP: one
// encoding/json decode of the same message, as an MCP server does.
func BenchmarkPlainDecode(b *testing.B) {
	body := []byte(`{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"tickets.comment","arguments":{"ticket":"4521","text":"` +
		strings.Repeat("x", 512) + `"},"_meta":{"progressToken":7}}}`)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		var m struct {
			Method string `json:"method"`
			Params struct {
				Name      string          `json:"name"`
				Arguments json.RawMessage `json:"arguments"`
			} `json:"params"`
		}
		if err := json.Unmarshal(body, &m); err != nil {
			b.Fatal(err)
		}
	}
}
