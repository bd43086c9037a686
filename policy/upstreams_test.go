package policy

import (
	"strings"
	"testing"
)

const upstreamTemplateHead = `templates:
  - name: up
    principals: [{issuer: dev}]
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read, tickets.comment, "kb.*"]
    audiences: [https://tools.example.com]
`

func TestTemplateUpstreamsValid(t *testing.T) {
	set, problems := loadInline(t, upstreamTemplateHead+`    upstreams:
      - name: tickets
        url: https://Tickets.example.com/api
        credential: {from: task_token, as: header}
        routes:
          - {methods: [GET, HEAD], path: "/tickets/*", tool: tickets.read}
          - {methods: [POST], path: "/tickets/*/comments", tool: tickets.comment}
          - {methods: [GET], path: "/kb/**", tool: kb.search}
      - name: vault-kv
        url: http://127.0.0.1:8200
        allow_private: true
        pass_headers: [cookie]
        credential: {from: vault_token, as: header, name: X-Vault-Token}
        routes: [{methods: [GET], path: "/v1/secret/data/app", tool: kb.secret}]
      - name: crm
        url: https://crm.example.com
        credential: {from: "oauth:corp-idp", as: header, scopes: [crm.read, "crm:write"]}
        routes: [{methods: [GET], path: "/**", tool: kb.crm}]
      - name: appdb
        postgres: {tool: kb.sql, sql_text: true}
`, testIssuers)
	if problems != nil {
		t.Fatalf("problems: %v", problems)
	}
	tm := mustGet(t, set, "up")
	if len(tm.Upstreams) != 3 {
		t.Fatalf("upstreams = %+v", tm.Upstreams)
	}
	u, ok := tm.UpstreamFor("tickets.example.com", "")
	if !ok || u.Name != "tickets" || u.Credential.Name != "Authorization" || u.Credential.Scheme != "Bearer" || u.Port() != "443" {
		t.Fatalf("UpstreamFor = %+v, %v", u, ok)
	}
	if _, ok := tm.UpstreamFor("tickets.example.com", "8443"); ok {
		t.Fatal("another port matched")
	}
	v, _ := tm.Upstream("vault-kv")
	if !v.AllowPrivate || strings.Join(v.PassHeaders, ",") != "Cookie" || v.Credential.Scheme != "" {
		t.Fatalf("vault-kv = %+v", v)
	}
	crm, _ := tm.Upstream("crm")
	if crm.Credential.From != "oauth:corp-idp" || crm.Credential.Provider != "corp-idp" || strings.Join(crm.Credential.Scopes, " ") != "crm.read crm:write" ||
		crm.Credential.Scheme != "Bearer" {
		t.Fatalf("crm = %+v", crm.Credential)
	}
	if pg := tm.Postgres; pg == nil || pg.Name != "appdb" || pg.Tool != "kb.sql" || !pg.SQLText {
		t.Fatalf("postgres = %+v", tm.Postgres)
	}
	for _, tc := range []struct{ method, path, tool string }{
		{"GET", "/api/tickets/7", "tickets.read"},
		{"HEAD", "/api/tickets/7", "tickets.read"},
		{"POST", "/api/tickets/7/comments", "tickets.comment"},
		{"GET", "/api/kb", "kb.search"},
		{"GET", "/api/kb/a/b/c", "kb.search"},
		{"POST", "/api/tickets/7", ""},
		{"GET", "/api/tickets", ""},
		{"GET", "/api/tickets/7/comments", ""},
		{"GET", "/apix/tickets/7", ""},
		{"GET", "/tickets/7", ""},
		{"GET", "/api/tickets//", ""},
	} {
		r := u.Match(tc.method, tc.path)
		got := ""
		if r != nil {
			got = r.Tool
		}
		if got != tc.tool {
			t.Errorf("Match(%s %s) = %q, want %q", tc.method, tc.path, got, tc.tool)
		}
	}
}

func TestTemplateUpstreamsInvalid(t *testing.T) {
	const ok = "        credential: {from: task_token, as: header}\n        routes: [{methods: [GET], path: /x, tool: tickets.read}]\n"
	cases := []struct {
		name, block, field, msg string
		line                    int
	}{
		{"not a list", "    upstreams: yes\n", "templates[0].upstreams", "must be a list", 7},
		{"ftp", "    upstreams:\n      - name: a\n        url: ftp://x\n" + ok, "templates[0].upstreams[0].url", "http or https", 9},
		{"query in url", "    upstreams:\n      - name: a\n        url: https://x/?a=b\n" + ok, "templates[0].upstreams[0].url", "query", 9},
		{"dot segment in url", "    upstreams:\n      - name: a\n        url: https://x/a/../b\n" + ok, "templates[0].upstreams[0].url", "clean", 9},
		{"bad name", "    upstreams:\n      - name: A!\n        url: https://x\n" + ok, "templates[0].upstreams[0].name", "not a valid upstream name", 8},
		{"tool not in template", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: header}\n        routes: [{methods: [GET], path: /x, tool: admin.delete}]\n",
			"templates[0].upstreams[0].routes[0].tool", "not in the template's tools", 11},
		{"wildcard tool", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: header}\n        routes: [{methods: [GET], path: /x, tool: \"kb.*\"}]\n",
			"templates[0].upstreams[0].routes[0].tool", "no pattern", 11},
		{"bad path", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: header}\n        routes: [{methods: [GET], path: /a/../b, tool: tickets.read}]\n",
			"templates[0].upstreams[0].routes[0].path", "not a valid path pattern", 11},
		{"inner **", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: header}\n        routes: [{methods: [GET], path: /a/**/b, tool: tickets.read}]\n",
			"templates[0].upstreams[0].routes[0].path", "not a valid path pattern", 11},
		{"lower-case method", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: header}\n        routes: [{methods: [get], path: /x, tool: tickets.read}]\n",
			"templates[0].upstreams[0].routes[0].methods[0]", "not a method", 11},
		{"CONNECT", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: header}\n        routes: [{methods: [CONNECT], path: /x, tool: tickets.read}]\n",
			"templates[0].upstreams[0].routes[0].methods[0]", "not a method", 11},
		{"unknown source", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: aws, as: header}\n        routes: [{methods: [GET], path: /x, tool: tickets.read}]\n",
			"templates[0].upstreams[0].credential.from", "must be one of", 10},
		{"query without name", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: query}\n        routes: [{methods: [GET], path: /x, tool: tickets.read}]\n",
			"templates[0].upstreams[0].credential.name", "is required", 10},
		{"credential in Cookie", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: header, name: Cookie}\n        routes: [{methods: [GET], path: /x, tool: tickets.read}]\n",
			"templates[0].upstreams[0].credential.name", "cannot carry a credential", 10},
		{"pass Proxy-Authorization", "    upstreams:\n      - name: a\n        url: https://x\n        pass_headers: [Proxy-Authorization]\n" + ok,
			"templates[0].upstreams[0].pass_headers[0]", "cannot be passed", 10},
		{"pass Authorization over the credential", "    upstreams:\n      - name: a\n        url: https://x\n        pass_headers: [Authorization]\n" + ok,
			"templates[0].upstreams[0].pass_headers", "the credential goes there", 8},
		{"allow_private text", "    upstreams:\n      - name: a\n        url: https://x\n        allow_private: \"yes\"\n" + ok,
			"templates[0].upstreams[0].allow_private", "true or false", 10},
		{"no routes", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: header}\n        routes: []\n",
			"templates[0].upstreams[0].routes", "at least one route", 11},
		{"same host twice", "    upstreams:\n      - name: a\n        url: https://x\n" + ok + "      - name: b\n        url: https://X:443/other\n" + ok,
			"templates[0].upstreams[1].url", "one upstream per host", 13},
		{"oauth without provider", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: \"oauth:\", as: header}\n        routes: [{methods: [GET], path: /x, tool: tickets.read}]\n",
			"templates[0].upstreams[0].credential.from", "OAuth provider name", 10},
		{"oauth provider with upper case", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: \"oauth:Corp\", as: header}\n        routes: [{methods: [GET], path: /x, tool: tickets.read}]\n",
			"templates[0].upstreams[0].credential.from", "OAuth provider name", 10},
		{"scopes without oauth", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: task_token, as: header, scopes: [a]}\n        routes: [{methods: [GET], path: /x, tool: tickets.read}]\n",
			"templates[0].upstreams[0].credential.scopes", "oauth:<provider> credential only", 10},
		{"scope with a space", "    upstreams:\n      - name: a\n        url: https://x\n        credential: {from: \"oauth:idp\", as: header, scopes: [\"a b\"]}\n        routes: [{methods: [GET], path: /x, tool: tickets.read}]\n",
			"templates[0].upstreams[0].credential.scopes[0]", "not an OAuth scope", 10},
		{"postgres without tool", "    upstreams:\n      - name: db\n        postgres: {sql_text: true}\n",
			"templates[0].upstreams[0].postgres.tool", "required", 9},
		{"postgres tool not in template", "    upstreams:\n      - name: db\n        postgres: {tool: admin.sql}\n",
			"templates[0].upstreams[0].postgres.tool", "no task could open a database session", 9},
		{"postgres tool pattern", "    upstreams:\n      - name: db\n        postgres: {tool: \"kb.*\"}\n",
			"templates[0].upstreams[0].postgres.tool", "no pattern", 9},
		{"postgres sql_text text", "    upstreams:\n      - name: db\n        postgres: {tool: kb.sql, sql_text: \"yes\"}\n",
			"templates[0].upstreams[0].postgres.sql_text", "true or false", 9},
		{"postgres with a url", "    upstreams:\n      - name: db\n        url: https://x\n        postgres: {tool: kb.sql}\n",
			"templates[0].upstreams[0].url", "unknown field", 9},
		{"two postgres", "    upstreams:\n      - name: db\n        postgres: {tool: kb.sql}\n      - name: db2\n        postgres: {tool: kb.sql}\n",
			"templates[0].upstreams[1].postgres", "only one postgres upstream", 10},
		{"unknown key", "    upstreams:\n      - name: a\n        url: https://x\n        headers: {}\n" + ok, "templates[0].upstreams[0].headers", "unknown field", 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, problems := loadInline(t, upstreamTemplateHead+tc.block, testIssuers)
			if len(problems) != 1 {
				t.Fatalf("want one problem, got %v", problems)
			}
			p := problems[0]
			if p.File != "inline.yaml" || p.Template != "up" || p.Field != tc.field || p.Line != tc.line || !strings.Contains(p.Message, tc.msg) {
				t.Fatalf("problem = %s; want %s at line %d with %q", p, tc.field, tc.line, tc.msg)
			}
		})
	}
}
