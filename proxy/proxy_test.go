package proxy

import (
	"bufio"
	"context"
	"encoding/base64"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/valet-dev/valet/policy"
)

func TestFraming(t *testing.T) {
	cases := []struct{ name, head, rule string }{
		{"plain", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", ""},
		{"chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", ""},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", "duplicate_host"},
		{"te and cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "te_and_cl"},
		{"te and cl, lower case", "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", "te_and_cl"},
		{"two content lengths", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", "duplicate_content_length"},
		{"gzip transfer coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "transfer_encoding"},
		{"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", "header_whitespace"},
		{"folded line", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c: d\r\n\r\n", "header_whitespace"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if rule, _ := framing([]byte(tc.head)); rule != tc.rule {
				t.Fatalf("framing = %q, want %q", rule, tc.rule)
			}
		})
	}
}

func TestPeekHead(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader("GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), maxHead+1)
	head, err := peekHead(br)
	if err != nil || string(head) != "GET / HTTP/1.1\r\nHost: a\r\n" {
		t.Fatalf("peekHead = %q, %v", head, err)
	}
	if br.Buffered() == 0 {
		t.Fatal("peekHead consumed the request")
	}
	big := "GET / HTTP/1.1\r\nX: " + strings.Repeat("a", maxHead) + "\r\n\r\n"
	if _, err := peekHead(bufio.NewReaderSize(strings.NewReader(big), maxHead+1)); err == nil {
		t.Fatal("an oversized head was accepted")
	}
}

func TestCleanPath(t *testing.T) {
	for p, want := range map[string]bool{
		"/api/tickets/7": true, "/api/kb/a-b_c.txt": true, "/": true,
		"/api//x": false, "/api/../x": false, "/api/./x": false, "/api/%2e%2e/x": false, "/api/a%2Fb": false,
		"/api/a%5cb": false, `/api/a\b`: false, "/api/a%00": false, "api/x": false, "/a\x01": false,
	} {
		if got := cleanPath(p); got != want {
			t.Errorf("cleanPath(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestIsPrivate(t *testing.T) {
	for ip, want := range map[string]bool{
		"127.0.0.1": true, "10.1.2.3": true, "172.16.0.1": true, "192.168.1.1": true, "169.254.169.254": true,
		"0.0.0.0": true, "0.1.2.3": true, "100.64.0.1": true, "::1": true, "fd00::1": true, "fe80::1": true,
		"::ffff:127.0.0.1": true, "224.0.0.1": true, "::": true,
		"8.8.8.8": false, "1.1.1.1": false, "2606:4700::1111": false, "100.128.0.1": false,
	} {
		if got := isPrivate(net.ParseIP(ip)); got != want {
			t.Errorf("isPrivate(%s) = %v, want %v", ip, got, want)
		}
	}
}

func TestProxyHandle(t *testing.T) {
	basic := func(s string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(s)) }
	for h, want := range map[string]string{
		"Bearer vph_x": "vph_x", "bearer  vph_x ": "vph_x", basic("agent:vph_y"): "vph_y", basic(":vph_z"): "vph_z",
		basic("agent:"): "", basic("agent"): "", "Basic !!!": "", "Digest x": "", "": "",
	} {
		got, ok := proxyHandle(h)
		if got != want || ok != (want != "") {
			t.Errorf("proxyHandle(%q) = %q, %v; want %q", h, got, ok, want)
		}
	}
}

func TestNewHandle(t *testing.T) {
	a, sa, err := newHandle()
	if err != nil {
		t.Fatal(err)
	}
	b, sb, _ := newHandle()
	if a == b || sa == sb || !strings.HasPrefix(a, "vph_") || len(a) != 4+43 {
		t.Fatalf("handles %q %q", a, b)
	}
	if strings.Contains(handleID(sa), a[4:12]) || len(handleID(sa)) != 12 {
		t.Fatalf("handleID %q", handleID(sa))
	}
}

// TestOutgoingCredentials: each placement of each credential source, and
// the agent's own credential headers dropped.
func TestOutgoingCredentials(t *testing.T) {
	set, err := policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(`templates:
  - name: t
    principals: [{issuer: dev}]
    ttl: {default: 5m, max: 10m}
    tools: [v.read, db.query, q.read]
    audiences: [valet-proxy]
    upstreams:
      - name: vault
        url: https://vault.example.com:8200
        credential: {from: vault_token, as: header, name: X-Vault-Token}
        routes: [{methods: [GET], path: "/v1/**", tool: v.read}]
      - name: db
        url: https://db.example.com/api
        pass_headers: [Cookie]
        credential: {from: database_password, as: basic}
        routes: [{methods: [POST], path: /query, tool: db.query}]
      - name: q
        url: https://q.example.com
        credential: {from: task_token, as: query, name: key}
        routes: [{methods: [GET], path: /x, tool: q.read}]
`)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, _ := set.Get("t")
	task := &Task{ID: "tsk_1", ctx: context.Background(), creds: credentials{taskToken: "jwt-secret", vaultToken: "hvs.secret", dbUser: "v-user", dbSecret: "db-secret"}}
	p := &Proxy{cfg: Config{MaxBody: 1 << 20}}
	agentReq := func(method string) *http.Request {
		r := httptest.NewRequest(method, "/u/x", strings.NewReader("{}"))
		r.Header.Set("Authorization", "Bearer vph_handle")
		r.Header.Set("Cookie", "a=b")
		r.Header.Set("Connection", "X-Hop")
		r.Header.Set("X-Hop", "1")
		return r
	}
	up, _ := tmpl.Upstream("vault")
	out, err := p.outgoing(agentReq("GET"), &call{task: task, tmpl: tmpl, up: up, path: "/v1/secret/data/app"}, false)
	if err != nil || out.URL.String() != "https://vault.example.com:8200/v1/secret/data/app" || out.Header.Get("X-Vault-Token") != "hvs.secret" ||
		out.Header.Get("Authorization") != "" || out.Header.Get("Cookie") != "" || out.Header.Get("X-Hop") != "" {
		t.Fatalf("vault: %v %s %v", err, out.URL, out.Header)
	}
	up, _ = tmpl.Upstream("db")
	out, err = p.outgoing(agentReq("POST"), &call{task: task, tmpl: tmpl, up: up, path: "/api/query"}, false)
	user, pass, ok := out.BasicAuth()
	if err != nil || !ok || user != "v-user" || pass != "db-secret" || out.Header.Get("Cookie") != "a=b" {
		t.Fatalf("db: %v %v", err, out.Header)
	}
	up, _ = tmpl.Upstream("q")
	out, err = p.outgoing(agentReq("GET"), &call{task: task, tmpl: tmpl, up: up, path: "/x", query: "key=mine&a=1"}, true)
	if err != nil || out.URL.Query().Get("key") != "jwt-secret" || len(out.URL.Query()["key"]) != 1 || out.URL.Query().Get("a") != "1" {
		t.Fatalf("query: %v %s", err, out.URL)
	}
	// An ended task has no credential to attach.
	task.creds = credentials{}
	if _, err := p.outgoing(agentReq("GET"), &call{task: task, tmpl: tmpl, up: up, path: "/x"}, true); err == nil {
		t.Fatal("an ended task's call was built")
	}
}
