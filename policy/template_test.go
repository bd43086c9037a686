package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var testIssuers = []string{"dev", "prod"}

// loadValid loads testdata/templates/valid, failing the test on any error.
func loadValid(t *testing.T) *Set {
	t.Helper()
	files, err := ReadFiles([]string{filepath.Join("testdata", "templates", "valid")})
	if err != nil {
		t.Fatalf("ReadFiles: %v", err)
	}
	set, err := Load(files, testIssuers)
	if err != nil {
		t.Fatalf("Load:\n%v", err)
	}
	return set
}

func mustGet(t *testing.T, set *Set, name string) *Template {
	t.Helper()
	tmpl, ok := set.Get(name)
	if !ok {
		t.Fatalf("Get(%q): not found; have %v", name, set.Names())
	}
	return tmpl
}

// loadInline loads one in-line file called "inline.yaml".
func loadInline(t *testing.T, src string, issuers []string) (*Set, []Problem) {
	t.Helper()
	set, err := Load([]File{{Name: "inline.yaml", Data: []byte(src)}}, issuers)
	return set, problemsOf(t, set, err)
}

// problemsOf checks the either-or contract of Load and returns the
// problems (nil when the load succeeded).
func problemsOf(t *testing.T, set *Set, err error) []Problem {
	t.Helper()
	if err == nil {
		if set == nil {
			t.Fatal("Load returned neither a set nor an error")
		}
		return nil
	}
	if set != nil {
		t.Fatal("Load returned a set together with an error")
	}
	var te *Errors
	if !errors.As(err, &te) {
		t.Fatalf("error is %T, not *Errors: %v", err, err)
	}
	if len(te.Problems) == 0 {
		t.Fatal("*Errors with no problems")
	}
	return te.Problems
}

func TestLoadTemplatesValid(t *testing.T) {
	files, err := ReadFiles([]string{filepath.Join("testdata", "templates", "valid")})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f.Name))
	}
	if want := []string{"comments-only.yaml", "empty.yaml", "ops.yml", "support.yaml"}; !slices.Equal(names, want) {
		t.Fatalf("files read = %v, want %v (sorted, *.yaml and *.yml only)", names, want)
	}

	for _, tc := range []struct {
		name    string
		issuers []string
	}{
		{"known issuers checked", testIssuers},
		{"issuer names not checked", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := Load(files, tc.issuers)
			if err != nil {
				t.Fatalf("Load:\n%v", err)
			}
			if got, want := set.Names(), []string{"ops.night-shift", "support-readonly", "support-triage"}; !slices.Equal(got, want) {
				t.Fatalf("Names() = %v, want %v", got, want)
			}
			if _, ok := set.Get("nope"); ok {
				t.Error(`Get("nope") found a template`)
			}

			st := mustGet(t, set, "support-triage")
			if st.Name != "support-triage" || st.Description != "Read and comment on support tickets." {
				t.Errorf("name/description = %q/%q", st.Name, st.Description)
			}
			if want := filepath.Join("testdata", "templates", "valid", "support.yaml"); st.Source != want {
				t.Errorf("Source = %q, want %q", st.Source, want)
			}
			if st.DefaultTTL != 5*time.Minute || st.MaxTTL != 15*time.Minute {
				t.Errorf("ttl = %v/%v, want 5m/15m", st.DefaultTTL, st.MaxTTL)
			}
			if want := []string{"tickets.read", "tickets.comment", "kb.*"}; !slices.Equal(st.Tools, want) {
				t.Errorf("Tools = %v, want %v", st.Tools, want)
			}
			if want := []string{"https://tools.example.com"}; !slices.Equal(st.Audiences, want) {
				t.Errorf("Audiences = %v, want %v", st.Audiences, want)
			}
			if want := []string{"tickets:read", "tickets:write"}; !slices.Equal(st.Scopes, want) {
				t.Errorf("Scopes = %v, want %v", st.Scopes, want)
			}
			if len(st.Principals) != 2 || st.Principals[0].Issuer != "dev" || st.Principals[0].Condition == nil ||
				st.Principals[1].Issuer != "prod" || st.Principals[1].Condition != nil {
				t.Errorf("Principals = %+v", st.Principals)
			}
			var conds []string
			for _, c := range st.Conditions {
				conds = append(conds, c.Name)
			}
			if want := []string{"intent-stated", "short-lived", "customer-given"}; !slices.Equal(conds, want) {
				t.Errorf("Conditions = %v, want %v", conds, want)
			}

			ops := mustGet(t, set, "ops.night-shift")
			if ops.MaxTTL != 24*time.Hour || !strings.HasPrefix(ops.Description, "Restart services") {
				t.Errorf("ops.night-shift: MaxTTL %v, Description %q", ops.MaxTTL, ops.Description)
			}
			ro := mustGet(t, set, "support-readonly")
			if ro.DefaultTTL != time.Minute || ro.MaxTTL != time.Minute || len(ro.Scopes) != 0 || len(ro.Conditions) != 0 {
				t.Errorf("support-readonly = %+v", ro)
			}
		})
	}
}

func TestTemplateSetNil(t *testing.T) {
	var s *Set
	if _, ok := s.Get("x"); ok {
		t.Error("nil set found a template")
	}
	if s.Names() != nil {
		t.Error("nil set has names")
	}
}

func TestLoadTemplatesEmpty(t *testing.T) {
	for _, tc := range []struct{ name, src string }{
		{"no bytes", ""},
		{"comments only", "# nothing yet\n"},
		{"document marker only", "---\n"},
		{"empty list", "templates: []\n"},
		{"null list", "templates:\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, problems := loadInline(t, tc.src, testIssuers)
			if problems != nil {
				t.Fatalf("problems: %v", problems)
			}
			if n := set.Names(); len(n) != 0 {
				t.Fatalf("Names() = %v, want none", n)
			}
		})
	}
	set, err := Load(nil, nil)
	if err != nil || len(set.Names()) != 0 {
		t.Fatalf("Load(nil) = %v, %v", set, err)
	}
}

func TestTemplateAllowsTool(t *testing.T) {
	st := mustGet(t, loadValid(t), "support-triage") // tickets.read, tickets.comment, kb.*
	for _, tc := range []struct {
		tool string
		want bool
	}{
		{"tickets.read", true},
		{"tickets.comment", true},
		{"tickets.delete", false},
		{"tickets", false},
		{"tickets.read.all", false},
		{"TICKETS.READ", false},
		{"kb.search", true},
		{"kb.articles.read", true},
		{"kb", false},
		{"kb.", false},
		{"kbx.read", false},
		{"xkb.read", false},
		{"kb.*", false}, // a name with "*" is outside the tool grammar (issue 9): never a match
		{"kb..x", false},
		{"", false},
	} {
		t.Run(tc.tool, func(t *testing.T) {
			if got := st.AllowsTool(tc.tool); got != tc.want {
				t.Errorf("AllowsTool(%q) = %v, want %v", tc.tool, got, tc.want)
			}
		})
	}
}

func TestTemplateAdmitsPrincipal(t *testing.T) {
	set := loadValid(t)
	st := mustGet(t, set, "support-triage") // dev with sub "agent-*", or anyone from prod
	ro := mustGet(t, set, "support-readonly")
	ops := mustGet(t, set, "ops.night-shift") // prod with "oncall" in groups

	for _, tc := range []struct {
		name    string
		tmpl    *Template
		p       Identity
		want    bool
		wantErr bool
	}{
		{"condition true", st, Identity{Issuer: "dev", Claims: map[string]any{"sub": "agent-7"}}, true, false},
		{"condition false", st, Identity{Issuer: "dev", Claims: map[string]any{"sub": "bob"}}, false, false},
		{"rule without condition", st, Identity{Issuer: "prod"}, true, false},
		{"wrong issuer", st, Identity{Issuer: "staging", Claims: map[string]any{"sub": "agent-7"}}, false, false},
		{"issuer matched by name not URL", st, Identity{Issuer: "", IssuerURL: "dev", Claims: map[string]any{"sub": "agent-7"}}, false, false},
		{"condition errors on missing claim", st, Identity{Issuer: "dev", Claims: map[string]any{}}, false, true},
		{"condition errors on nil claims", st, Identity{Issuer: "dev"}, false, true},
		{"condition errors on wrong claim type", st, Identity{Issuer: "dev", Claims: map[string]any{"sub": 42}}, false, true},
		{"only rule has no condition", ro, Identity{Issuer: "dev"}, true, false},
		{"only rule, other issuer", ro, Identity{Issuer: "prod"}, false, false},
		{"list claim contains", ops, Identity{Issuer: "prod", Claims: map[string]any{"groups": []any{"sre", "oncall"}}}, true, false},
		{"list claim lacks", ops, Identity{Issuer: "prod", Claims: map[string]any{"groups": []string{"sre"}}}, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.tmpl.AdmitsPrincipal(tc.p)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("AdmitsPrincipal = %v, %v; want %v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}

	t.Run("an erroring rule does not block another that admits", func(t *testing.T) {
		set, problems := loadInline(t, `
templates:
  - name: two-rules
    principals:
      - issuer: dev
        condition: 'claims.team == "a"'
      - issuer: dev
        condition: 'claims.sub == "agent-1"'
    ttl: {default: 1m, max: 1m}
    tools: [x]
    audiences: [y]
`, testIssuers)
		if problems != nil {
			t.Fatal(problems)
		}
		tmpl := mustGet(t, set, "two-rules")
		if ok, err := tmpl.AdmitsPrincipal(Identity{Issuer: "dev", Claims: map[string]any{"sub": "agent-1"}}); !ok || err != nil {
			t.Errorf("second rule: got %v, %v; want true, nil", ok, err)
		}
		ok, err := tmpl.AdmitsPrincipal(Identity{Issuer: "dev", Claims: map[string]any{"sub": "agent-2"}})
		if ok || err == nil {
			t.Errorf("no rule admits, first errored: got %v, %v; want false and the error", ok, err)
		}
	})
}

func TestTemplateCheck(t *testing.T) {
	set := loadValid(t)
	st := mustGet(t, set, "support-triage")
	ops := mustGet(t, set, "ops.night-shift")
	ro := mustGet(t, set, "support-readonly")

	agent := Identity{Issuer: "prod", IssuerURL: "https://idp.example.com", Subject: "agent-7", Claims: map[string]any{"sub": "agent-7"}}
	good := Request{
		Template: "support-triage",
		Intent:   "answer ticket 4711 about billing",
		Tools:    []string{"tickets.read"},
		Context:  map[string]any{"customer": "acme"},
	}
	with := func(f func(*Request)) Request {
		d := good
		f(&d)
		return d
	}
	night := time.Date(2026, 3, 1, 23, 0, 0, 0, time.UTC)
	noon := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	restart := Request{Template: "ops.night-shift", Intent: "restart the api", Tools: []string{"deploy/restart"}}

	for _, tc := range []struct {
		name     string
		tmpl     *Template
		p        Identity
		d        Request
		ttl      time.Duration
		now      time.Time
		wantRule string
		wantErr  bool
	}{
		{"all conditions hold", st, agent, good, 5 * time.Minute, noon, "", false},
		{"ttl exactly at the condition's limit", st, agent, good, 10 * time.Minute, noon, "", false},
		{"intent too short", st, agent, with(func(d *Request) { d.Intent = "fix" }), 5 * time.Minute, noon, "intent-stated", false},
		{"first failing condition is named", st, agent, with(func(d *Request) { d.Intent = "" }), time.Hour, noon, "intent-stated", false},
		{"ttl compared as a CEL duration", st, agent, good, 11 * time.Minute, noon, "short-lived", false},
		{"missing context key errors", st, agent, with(func(d *Request) { d.Context = map[string]any{"other": 1} }), 5 * time.Minute, noon, "customer-given", true},
		{"nil context is an empty map", st, agent, with(func(d *Request) { d.Context = nil }), 5 * time.Minute, noon, "customer-given", true},
		{"context value false", st, agent, with(func(d *Request) { d.Context = map[string]any{"customer": ""} }), 5 * time.Minute, noon, "customer-given", false},
		{"now at night", ops, agent, restart, time.Hour, night, "", false},
		{"now at night in another zone", ops, agent, restart, time.Hour, night.In(time.FixedZone("CEST", 2*3600)), "", false},
		{"now at noon", ops, agent, restart, time.Hour, noon, "night-only", false},
		{"tools list", ops, agent, with(func(d *Request) { d.Tools = []string{"metrics.read"} }), time.Hour, night, "asks-for-restart", false},
		{"nil tools is an empty list", ops, agent, with(func(d *Request) { d.Tools = nil }), time.Hour, night, "asks-for-restart", false},
		{"principal fields", ops, Identity{Issuer: "prod", Subject: "bob"}, restart, time.Hour, night, "agent-subject", false},
		{"no conditions", ro, Identity{}, Request{}, 0, time.Time{}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rule, err := check(tc.tmpl, tc.p, tc.d, tc.ttl, tc.now)
			if rule != tc.wantRule || (err != nil) != tc.wantErr {
				t.Errorf("Check = %q, %v; want %q, error %v", rule, err, tc.wantRule, tc.wantErr)
			}
		})
	}

	t.Run("request variables", func(t *testing.T) {
		set, problems := loadInline(t, `
templates:
  - name: vars
    principals: [{issuer: dev}]
    ttl: {default: 1m, max: 1m}
    tools: [x]
    audiences: [y]
    conditions:
      - name: template
        expression: 'request.template == "vars"'
      - name: issuer-url
        expression: 'principal.issuer_url == "https://idp" && principal.claims.team == "a"'
      - name: context-nested
        expression: 'request.context.ticket.priority >= 2'
      - name: tools-all
        expression: 'request.tools.all(t, t.startsWith("x"))'
`, testIssuers)
		if problems != nil {
			t.Fatal(problems)
		}
		tmpl := mustGet(t, set, "vars")
		p := Identity{Issuer: "dev", IssuerURL: "https://idp", Claims: map[string]any{"team": "a"}}
		d := Request{Template: "vars", Tools: []string{"x", "x.y"}, Context: map[string]any{"ticket": map[string]any{"priority": 3}}}
		if rule, err := check(tmpl, p, d, time.Minute, noon); rule != "" || err != nil {
			t.Errorf("Check = %q, %v; want all to hold", rule, err)
		}
		d.Tools = append(d.Tools, "y")
		if rule, err := check(tmpl, p, d, time.Minute, noon); rule != "tools-all" || err != nil {
			t.Errorf("Check = %q, %v; want tools-all", rule, err)
		}
	})
}

// want is an expected problem; msg is a substring of its Message.
type want struct {
	file  string
	line  int
	tmpl  string
	field string
	msg   string
}

func checkProblems(t *testing.T, got []Problem, wants []want) {
	t.Helper()
	ok := len(got) == len(wants)
	for i := 0; ok && i < len(got); i++ {
		g, w := got[i], wants[i]
		ok = g.File == w.file && g.Line == w.line && g.Template == w.tmpl && g.Field == w.field && strings.Contains(g.Message, w.msg)
	}
	if !ok {
		var b strings.Builder
		for _, g := range got {
			b.WriteString("\n  " + g.String())
		}
		b.WriteString("\nwant:")
		for _, w := range wants {
			b.WriteString("\n  " + Problem{File: w.file, Line: w.line, Template: w.tmpl, Field: w.field, Message: "..." + w.msg + "..."}.String())
		}
		t.Errorf("problems:%s", b.String())
	}
}

func TestLoadTemplatesInvalidFiles(t *testing.T) {
	dir := filepath.Join("testdata", "templates", "invalid")
	path := func(name string) string { return filepath.Join(dir, name) }
	for _, tc := range []struct {
		files []string
		wants []want
	}{
		{[]string{"five-problems.yaml"}, []want{
			{path("five-problems.yaml"), 3, "Bad_Name", "templates[0].name", "not a valid template name"},
			{path("five-problems.yaml"), 5, "Bad_Name", "templates[0].principals[0].issuer", `unknown issuer "staging"; known issuers: dev, prod`},
			{path("five-problems.yaml"), 7, "Bad_Name", "templates[0].ttl.default", "default 1h0m0s is longer than max 30m0s"},
			{path("five-problems.yaml"), 9, "Bad_Name", "templates[0].tools[0]", `"*" is not a valid tool pattern`},
			{path("five-problems.yaml"), 11, "Bad_Name", "templates[0].colour", "unknown field"},
		}},
		{[]string{"unknown-fields.yaml"}, []want{
			{path("unknown-fields.yaml"), 5, "typos", "templates[0].principals[0].conditon", "unknown field; expected one of issuer, condition"},
			{path("unknown-fields.yaml"), 6, "typos", "templates[0].ttl.min", "unknown field"},
			{path("unknown-fields.yaml"), 10, "typos", "templates[0].conditions[0].expression", "is required"},
			{path("unknown-fields.yaml"), 11, "typos", "templates[0].conditions[0].expr", "unknown field"},
			{path("unknown-fields.yaml"), 12, "", "vault", "unknown field"},
		}},
		{[]string{"bad-cel.yaml"}, []want{
			{path("bad-cel.yaml"), 5, "cel", "templates[0].principals[0].condition", "undeclared reference to 'request'"},
			{path("bad-cel.yaml"), 11, "cel", "templates[0].conditions[0].expression", "must evaluate to bool, not int"},
			{path("bad-cel.yaml"), 13, "cel", "templates[0].conditions[1].expression", "Syntax error"},
			{path("bad-cel.yaml"), 15, "cel", "templates[0].conditions[2].expression", "expression is empty"},
			{path("bad-cel.yaml"), 16, "cel", "templates[0].conditions[3].name", "not a valid condition name"},
			{path("bad-cel.yaml"), 18, "cel", "templates[0].conditions[4].name", `"not-bool" is used twice`},
		}},
		{[]string{"syntax.yaml"}, []want{
			{path("syntax.yaml"), 2, "", "", "invalid YAML: did not find expected ',' or ']'"},
		}},
		{[]string{"not-mapping.yaml"}, []want{
			{path("not-mapping.yaml"), 1, "", "", "the top level must be a mapping"},
		}},
		{[]string{"templates-not-list.yaml"}, []want{
			{path("templates-not-list.yaml"), 1, "", "templates", "must be a list of templates"},
		}},
		{[]string{"two-documents.yaml"}, []want{
			{path("two-documents.yaml"), 2, "", "", "one YAML document"},
		}},
		{[]string{"alias.yaml"}, []want{
			{path("alias.yaml"), 5, "", "", "anchors and aliases are not allowed in template files (found 2)"},
		}},
		{[]string{"missing.yaml"}, []want{
			{path("missing.yaml"), 2, "bare", "templates[0].principals", "is required"},
			{path("missing.yaml"), 2, "bare", "templates[0].ttl", "is required"},
			{path("missing.yaml"), 2, "bare", "templates[0].tools", "is required"},
			{path("missing.yaml"), 2, "bare", "templates[0].audiences", "is required"},
			{path("missing.yaml"), 3, "", "templates[1].name", "is required"},
			{path("missing.yaml"), 5, "", "templates[1].principals[0].issuer", "is required"},
			{path("missing.yaml"), 6, "", "templates[1].ttl.default", "is required"},
			{path("missing.yaml"), 6, "", "templates[1].ttl.max", "is required"},
			{path("missing.yaml"), 9, "", "templates[2]", "must be a mapping"},
		}},
		{[]string{"values.yaml"}, []want{
			{path("values.yaml"), 3, "values", "templates[0].principals", "at least one principal rule"},
			{path("values.yaml"), 4, "values", "templates[0].ttl.default", "must be longer than zero"},
			{path("values.yaml"), 4, "values", "templates[0].ttl.max", "longer than the limit of 24h"},
			{path("values.yaml"), 5, "values", "templates[0].tools[1]", `"kb" is listed twice (also at templates[0].tools[0])`},
			{path("values.yaml"), 5, "values", "templates[0].tools[2]", "not a valid tool pattern"},
			{path("values.yaml"), 5, "values", "templates[0].tools[3]", "not a valid tool pattern"},
			{path("values.yaml"), 5, "values", "templates[0].tools[4]", "not a valid tool pattern"},
			{path("values.yaml"), 5, "values", "templates[0].tools[5]", "not a valid tool name"},
			{path("values.yaml"), 6, "values", "templates[0].audiences[1]", "listed twice"},
			{path("values.yaml"), 6, "values", "templates[0].audiences[2]", "must not be empty"},
			{path("values.yaml"), 7, "values", "templates[0].scopes[1]", "listed twice"},
			{path("values.yaml"), 7, "values", "templates[0].scopes[2]", "not a valid scope"},
			{path("values.yaml"), 7, "values", "templates[0].scopes[3]", "must not be empty"},
			{path("values.yaml"), 9, "more-values", "templates[1].principals[0].issuer", "must name a trusted issuer"},
			{path("values.yaml"), 10, "more-values", "templates[1].ttl.default", `"soon" is not a duration`},
			{path("values.yaml"), 10, "more-values", "templates[1].ttl.max", "must be a string"},
			{path("values.yaml"), 11, "more-values", "templates[1].tools", "at least one tool"},
			{path("values.yaml"), 12, "more-values", "templates[1].audiences", "at least one audience"},
			{path("values.yaml"), 13, "more-values", "templates[1].scopes", "must be a list of scopes"},
			{path("values.yaml"), 14, "more-values", "templates[1].description", "must be a string"},
		}},
		{[]string{"dup-a.yaml", "dup-b.yaml"}, []want{
			{path("dup-b.yaml"), 7, "shared", "templates[1].name", "duplicate template name; first defined at " + path("dup-a.yaml") + ":2"},
			{path("dup-b.yaml"), 12, "unique", "templates[2].name", "duplicate template name; first defined at " + path("dup-b.yaml") + ":2"},
		}},
		{[]string{"five-problems.yaml", "syntax.yaml", "dup-a.yaml", "alias.yaml"}, []want{ // problems from every file, in file order
			{path("five-problems.yaml"), 3, "Bad_Name", "templates[0].name", "not a valid template name"},
			{path("five-problems.yaml"), 5, "Bad_Name", "templates[0].principals[0].issuer", "unknown issuer"},
			{path("five-problems.yaml"), 7, "Bad_Name", "templates[0].ttl.default", "longer than max"},
			{path("five-problems.yaml"), 9, "Bad_Name", "templates[0].tools[0]", "not a valid tool pattern"},
			{path("five-problems.yaml"), 11, "Bad_Name", "templates[0].colour", "unknown field"},
			{path("syntax.yaml"), 2, "", "", "invalid YAML"},
			{path("alias.yaml"), 5, "", "", "anchors and aliases"},
		}},
	} {
		t.Run(strings.Join(tc.files, "+"), func(t *testing.T) {
			var paths []string
			for _, f := range tc.files {
				paths = append(paths, path(f))
			}
			files, err := ReadFiles(paths)
			if err != nil {
				t.Fatal(err)
			}
			set, err := Load(files, testIssuers)
			checkProblems(t, problemsOf(t, set, err), tc.wants)
		})
	}
}

func TestLoadTemplatesInvalidInline(t *testing.T) {
	const valid = `
    principals: [{issuer: dev}]
    ttl: {default: 1m, max: 1m}
    tools: [x]
    audiences: [y]`
	for _, tc := range []struct {
		name    string
		src     string
		issuers []string
		wants   []want
	}{
		{"no issuers configured", "templates:\n  - name: a" + valid, []string{}, []want{
			{"inline.yaml", 3, "a", "templates[0].principals[0].issuer", `unknown issuer "dev": no trusted issuers are configured`},
		}},
		{"issuer names unchecked with nil", "templates:\n  - name: a\n    principals: [{issuer: anything}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]", nil, nil},
		{"duplicate template in one file", "templates:\n  - name: a" + valid + "\n  - name: a" + valid, testIssuers, []want{
			{"inline.yaml", 7, "a", "templates[1].name", "first defined at inline.yaml:2"},
		}},
		{"repeated key", "templates:\n  - name: a\n    name: b" + valid, testIssuers, []want{
			{"inline.yaml", 3, "a", "templates[0].name", "key repeated (first at line 2)"},
		}},
		{"top level unknown and missing", "template: []\n", testIssuers, []want{
			{"inline.yaml", 1, "", "template", "unknown field; expected one of templates"},
			{"inline.yaml", 1, "", "templates", "is required"},
		}},
		{"top level scalar", "hello\n", testIssuers, []want{
			{"inline.yaml", 1, "", "", "the top level must be a mapping"},
		}},
		{"explicit null document", "null\n", testIssuers, []want{
			{"inline.yaml", 1, "", "", "the top level must be a mapping"},
		}},
		{"non-string key", "templates:\n  - name: a" + valid + "\n    [x]: 1", testIssuers, []want{
			{"inline.yaml", 7, "a", "templates[0]", "mapping keys must be plain strings"},
		}},
		{"odd key is quoted in the path", "templates:\n  - name: a" + valid + "\n    \"a b\\nc\": 1", testIssuers, []want{
			{"inline.yaml", 7, "a", `templates[0]["a b\nc"]`, "unknown field"},
		}},
		{"control characters", "templates: [\x00]", testIssuers, []want{
			{"inline.yaml", 0, "", "", "invalid YAML: control characters are not allowed"},
		}},
		{"multi-line CEL error stays on one line", "templates:\n  - name: a" + valid + "\n    conditions:\n      - name: c\n        expression: |\n          request.intent ==\n            && true", testIssuers, []want{
			{"inline.yaml", 9, "a", "templates[0].conditions[0].expression", "invalid CEL: 2:"},
		}},
		{"principal condition over request vars", "templates:\n  - name: a\n    principals: [{issuer: dev, condition: 'now > timestamp(0)'}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]", testIssuers, []want{
			{"inline.yaml", 3, "a", "templates[0].principals[0].condition", "undeclared reference to 'now'"},
		}},
		{"condition not a mapping", "templates:\n  - name: a" + valid + "\n    conditions: ['true']", testIssuers, []want{
			{"inline.yaml", 7, "a", "templates[0].conditions[0]", "must be a mapping with the keys name, expression"},
		}},
		{"long and odd template name", "templates:\n  - name: \"" + strings.Repeat("x", 100) + "\\n\"" + valid, testIssuers, []want{
			{"inline.yaml", 2, strings.Repeat("x", 64) + "...", "templates[0].name", "not a valid template name"},
		}},
		{"tool name length", "templates:\n  - name: a" + valid + "\n  - name: b\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 1m}\n    tools: [" + strings.Repeat("t", 128) + ", " + strings.Repeat("t", 129) + "]\n    audiences: [y]", testIssuers, []want{
			{"inline.yaml", 10, "b", "templates[1].tools[1]", "not a valid tool name"},
		}},
		{"oversized file", "templates: []\n" + strings.Repeat("#", MaxFileSize), testIssuers, []want{
			{"inline.yaml", 0, "", "", "file is larger than 1048576 bytes"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, problems := loadInline(t, tc.src, tc.issuers)
			checkProblems(t, problems, tc.wants)
		})
	}
}

// TestLoadTemplatesAliasBomb checks that a billion-laughs document is refused
// quickly rather than expanded.
func TestLoadTemplatesAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 40; i++ {
		b.WriteString("a" + strconv.Itoa(i) + ": &a" + strconv.Itoa(i) + " [")
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + strconv.Itoa(i-1))
		}
		b.WriteString("]\n")
	}
	b.WriteString("templates: *a39\n")
	_, problems := loadInline(t, b.String(), testIssuers)
	checkProblems(t, problems, []want{
		{"inline.yaml", 1, "", "", "anchors and aliases are not allowed in template files (found 431)"}, // 40 anchors, 391 aliases
	})
}

func TestTemplateErrorsFormat(t *testing.T) {
	err := &Errors{Problems: []Problem{
		{File: "a.yaml", Line: 3, Template: "t", Field: "templates[0].tools[1]", Message: "bad"},
		{File: "a.yaml", Line: 1, Field: "templates", Message: "must be a list"},
		{File: "b.yaml", Template: "t", Message: "m"},
		{File: "c.yaml", Message: "file is larger"},
		{Message: "bare"},
	}}
	want := `a.yaml:3: template "t": templates[0].tools[1]: bad
a.yaml:1: templates: must be a list
b.yaml: template "t": m
c.yaml: file is larger
bare`
	if got := err.Error(); got != want {
		t.Errorf("Error() =\n%s\nwant\n%s", got, want)
	}
}

func TestReadTemplateFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("b.yml", "templates: []\n")
	write("a.yaml", "templates: []\n")
	write("notes.txt", "ignored\n")
	write(".#lock.yaml", "ignored\n")
	write("sub.yaml/inner.yaml", "ignored: not recursive\n")
	write("sub/deeper.yaml", "ignored: not recursive\n")
	single := write("elsewhere/single.txt", "templates: []\n") // a named file is read whatever its name
	big := write("big/huge.yaml", strings.Repeat("#", 3*MaxFileSize))

	t.Run("files and directories", func(t *testing.T) {
		files, err := ReadFiles([]string{single, dir})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, f := range files {
			names = append(names, f.Name)
		}
		want := []string{single, filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yml")}
		if !slices.Equal(names, want) {
			t.Errorf("read %v, want %v", names, want)
		}
	})
	t.Run("missing path", func(t *testing.T) {
		missing := filepath.Join(dir, "nope")
		_, err := ReadFiles([]string{dir, missing})
		if err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("error = %v, want one naming %s and wrapping ErrNotExist", err, missing)
		}
	})
	t.Run("unreadable file", func(t *testing.T) {
		if os.Getuid() == 0 {
			t.Skip("running as root: file permissions do not stop reads")
		}
		p := write("locked/x.yaml", "templates: []\n")
		if err := os.Chmod(p, 0); err != nil {
			t.Fatal(err)
		}
		_, err := ReadFiles([]string{filepath.Dir(p)})
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("error = %v, want one naming %s", err, p)
		}
	})
	t.Run("oversized file is capped and reported", func(t *testing.T) {
		files, err := ReadFiles([]string{big})
		if err != nil {
			t.Fatal(err)
		}
		if len(files) != 1 || len(files[0].Data) != MaxFileSize+1 {
			t.Fatalf("read %d files, first of %d bytes; want 1 of %d", len(files), len(files[0].Data), MaxFileSize+1)
		}
		set, err := Load(files, nil)
		checkProblems(t, problemsOf(t, set, err), []want{{big, 0, "", "", "file is larger than"}})
	})
}

// TestLoadTemplatesConcurrent runs loads and evaluations in parallel, for the
// race detector: the CEL environments are shared by every load, and a loaded
// set is shared by every request.
func TestLoadTemplatesConcurrent(t *testing.T) {
	files, err := ReadFiles([]string{filepath.Join("testdata", "templates", "valid")})
	if err != nil {
		t.Fatal(err)
	}
	shared := loadValid(t)
	p := Identity{Issuer: "dev", Claims: map[string]any{"sub": "agent-1"}}
	d := Request{Intent: "a long enough intent", Context: map[string]any{"customer": "acme"}}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 8 {
		wg.Go(func() {
			if _, err := Load(files, testIssuers); err != nil {
				errs <- err
			}
			st, _ := shared.Get("support-triage")
			if ok, err := st.AdmitsPrincipal(p); !ok || err != nil {
				errs <- fmt.Errorf("AdmitsPrincipal = %v, %v", ok, err)
			}
			if rule, err := check(st, p, d, time.Minute, time.Now()); rule != "" || err != nil {
				errs <- fmt.Errorf("Check = %q, %v", rule, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// check runs tmpl.Check for an agent acting for itself, with the task's
// lifetime ttl.
func check(tmpl *Template, p Identity, r Request, ttl time.Duration, now time.Time) (string, error) {
	r.TTL = ttl
	return tmpl.Check(p, nil, r, now)
}

// TestTemplateMaxLifetime: ttl.max_lifetime bounds renewals, defaults to
// ttl.max and may not be shorter than it.
func TestTemplateMaxLifetime(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ttl   string
		want  time.Duration
		wants []want
	}{
		{"defaults to max", "{default: 1m, max: 5m}", 5 * time.Minute, nil},
		{"set", "{default: 1m, max: 5m, max_lifetime: 2h}", 2 * time.Hour, nil},
		{"shorter than max", "{default: 1m, max: 5m, max_lifetime: 2m}", 0, []want{
			{"inline.yaml", 4, "a", "templates[0].ttl.max_lifetime", "max_lifetime 2m0s is shorter than max 5m0s"},
		}},
		{"longer than the limit", "{default: 1m, max: 5m, max_lifetime: 25h}", 0, []want{
			{"inline.yaml", 4, "a", "templates[0].ttl.max_lifetime", "25h0m0s is longer than the limit of 24h0m0s"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: " + tc.ttl + "\n    tools: [x]\n    audiences: [y]"
			set, problems := loadInline(t, src, testIssuers)
			checkProblems(t, problems, tc.wants)
			if tc.wants != nil {
				return
			}
			tmpl, ok := set.Get("a")
			if !ok {
				t.Fatal("template a not loaded")
			}
			if tmpl.MaxLifetime != tc.want {
				t.Errorf("MaxLifetime = %v, want %v", tmpl.MaxLifetime, tc.want)
			}
		})
	}
}
