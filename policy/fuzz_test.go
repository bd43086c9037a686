package policy

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzLoadTemplates feeds arbitrary bytes to Load as one template
// file. Whatever the input, it must not panic and must return either a set
// whose every template satisfies the load invariants, or a *Errors
// naming at least one problem, one per line of its message. Loading the
// same bytes as two files must report every template name as a duplicate.
func FuzzLoadTemplates(f *testing.F) {
	for _, dir := range []string{"valid", "invalid"} {
		paths, _ := filepath.Glob(filepath.Join("testdata", "templates", dir, "*.y*ml"))
		for _, p := range paths {
			data, err := os.ReadFile(p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(data)
		}
	}
	for _, s := range []string{
		"",
		"templates: []",
		"templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 2m}\n    tools: [a.*, b]\n    audiences: [x]\n",
		"templates:\n  - name: a\n    principals: [{issuer: dev, condition: 'claims.sub == \"x\"'}]\n    ttl: {default: 1m, max: 1m}\n    tools: [a]\n    audiences: [x]\n    scopes: [s]\n    conditions: [{name: c, expression: 'request.ttl <= duration(\"1m\") && now > timestamp(0)'}]\n",
		"templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 2m, max: 1m}\n    tools: ['*']\n    audiences: ['']\n",
		"a: &a [x, x]\nb: &b [*a, *a]\ntemplates: *b\n",
		"templates: !!binary aGVsbG8=\n",
		"templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 2m}\n    tools: [db.q, c.r]\n    audiences: [x]\n    upstreams:\n      - {name: db, postgres: {tool: db.q, sql_text: true}}\n      - {name: c, url: 'https://c', credential: {from: 'oauth:idp', as: header, scopes: [s]}, routes: [{methods: [GET], path: /x, tool: c.r}]}\n",
		"? [complex]\n: key\n",
		"templates:\n  - {name: a, <<: {tools: [x]}}\n",
		"templates: [" + strings.Repeat("[", 200) + "\n",
		"---\n---\n",
		"templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 2m}\n    tools: [a]\n    audiences: [x]\n    vault: {token_role: r, policies: [p, ROOT], num_uses: 3, database_role: d, wrap_ttl: 1m}\n",
		"\xff\xfe",
		"templates: []\nmonitors:\n  - {name: m, when: 'agent.denials_per_minute > 5 || now.getHours() < 6', action: freeze_agent}\n  - {name: n, when: 'agent.nope', action: alert}\n",
	} {
		f.Add([]byte(s))
	}

	admit := Identity{Issuer: "dev", Subject: "agent-1", Claims: map[string]any{"sub": "agent-1"}}
	decl := Request{Template: "a", Intent: "fuzzing", Tools: []string{"a"}}
	f.Fuzz(func(t *testing.T, data []byte) {
		set, err := Load([]File{{Name: "fuzz.yaml", Data: data}}, testIssuers)
		if err != nil {
			checkFuzzErrors(t, set, err)
			return
		}
		if set == nil {
			t.Fatal("no set and no error")
		}
		names := set.Names()
		if !slices.IsSorted(names) {
			t.Fatalf("Names() not sorted: %v", names)
		}
		for _, name := range names {
			tmpl, ok := set.Get(name)
			if !ok || tmpl.Name != name {
				t.Fatalf("Get(%q) = %v, %v", name, tmpl, ok)
			}
			checkTemplateInvariants(t, tmpl)
			// Evaluation is bounded by the CEL cost limit and never panics.
			_, _ = tmpl.AdmitsPrincipal(admit)
			_, _ = check(tmpl, admit, decl, tmpl.DefaultTTL, time.Unix(0, 0))
		}
		for _, m := range set.Monitors() {
			if !monitorNameRE.MatchString(m.Name) || (m.Action != MonitorFreezeAgent && m.Action != MonitorAlert) ||
				(m.Webhook != "" && checkWebhook(m.Webhook) != "") {
				t.Fatalf("monitor loaded with name %q, action %q, webhook %q", m.Name, m.Action, m.Webhook)
			}
			_, _ = m.Fires(map[string]int64{}, map[string]int64{}, time.Unix(0, 0)) // bounded by the cost limit, never panics
		}
		if len(names) == 0 {
			return
		}
		// Template names are unique across files.
		set2, err := Load([]File{{Name: "one.yaml", Data: data}, {Name: "two.yaml", Data: data}}, testIssuers)
		if err == nil {
			t.Fatalf("loading %d templates twice succeeded", len(names))
		}
		problems := checkFuzzErrors(t, set2, err)
		dups := 0
		for _, p := range problems {
			if p.File == "two.yaml" && strings.Contains(p.Message, "duplicate template name; first defined at one.yaml:") {
				dups++
			}
		}
		if dups != len(names) {
			t.Fatalf("loading twice reported %d duplicates, want %d:\n%v", dups, len(names), err)
		}
	})
}

func checkFuzzErrors(t *testing.T, set *Set, err error) []Problem {
	t.Helper()
	if set != nil {
		t.Fatal("a set together with an error")
	}
	var te *Errors
	if !errors.As(err, &te) {
		t.Fatalf("error is %T, not *Errors: %v", err, err)
	}
	if len(te.Problems) == 0 {
		t.Fatal("*Errors with no problems")
	}
	for _, p := range te.Problems {
		if p.File == "" || p.Message == "" || p.Line < 0 {
			t.Fatalf("incomplete problem %+v", p)
		}
	}
	if lines := strings.Count(te.Error(), "\n") + 1; lines != len(te.Problems) {
		t.Fatalf("Error() has %d lines for %d problems:\n%s", lines, len(te.Problems), te.Error())
	}
	return te.Problems
}

func checkTemplateInvariants(t *testing.T, tmpl *Template) {
	t.Helper()
	if !templateNameRE.MatchString(tmpl.Name) {
		t.Fatalf("invalid name %q loaded", tmpl.Name)
	}
	if len(tmpl.Principals) == 0 {
		t.Fatalf("%s: no principal rules", tmpl.Name)
	}
	for _, r := range tmpl.Principals {
		if !slices.Contains(testIssuers, r.Issuer) {
			t.Fatalf("%s: unknown issuer %q loaded", tmpl.Name, r.Issuer)
		}
	}
	if !(0 < tmpl.DefaultTTL && tmpl.DefaultTTL <= tmpl.MaxTTL && tmpl.MaxTTL <= MaxTTL) {
		t.Fatalf("%s: ttl default %v, max %v", tmpl.Name, tmpl.DefaultTTL, tmpl.MaxTTL)
	}
	if len(tmpl.Tools) == 0 || len(tmpl.Audiences) == 0 {
		t.Fatalf("%s: tools %q, audiences %q", tmpl.Name, tmpl.Tools, tmpl.Audiences)
	}
	for _, tool := range tmpl.Tools {
		if msg := checkToolPattern(tool); msg != "" {
			t.Fatalf("%s: %s", tmpl.Name, msg)
		}
		if !tmpl.AllowsTool(tool) && !strings.HasSuffix(tool, ".*") {
			t.Fatalf("%s: does not allow its own tool %q", tmpl.Name, tool)
		}
		if tool == "*" || tool == ".*" {
			t.Fatalf("%s: bare wildcard %q loaded", tmpl.Name, tool)
		}
	}
	for _, list := range [][]string{tmpl.Tools, tmpl.Audiences, tmpl.Scopes} {
		seen := map[string]bool{}
		for _, s := range list {
			if s == "" || seen[s] {
				t.Fatalf("%s: empty or repeated entry %q in %q", tmpl.Name, s, list)
			}
			seen[s] = true
		}
	}
	for _, c := range tmpl.Conditions {
		if c.program == nil || c.Name == "" {
			t.Fatalf("%s: uncompiled or unnamed condition %+v", tmpl.Name, c)
		}
	}
}
