package policy

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

const typedHead = "templates:\n  - name: a\n    principals: [{issuer: dev}]\n    ttl: {default: 1m, max: 1m}\n    tools: [x]\n    audiences: [y]\n"

// TestConditionsAreTypeChecked: a condition that names a field that does
// not exist or uses a value as the wrong type is a load error with its
// file, line and the fields that do exist. Before, every variable was a
// map(string, dyn): request.intnet and size(request.ttl) compiled, and the
// template denied every request.
func TestConditionsAreTypeChecked(t *testing.T) {
	condition := func(expr string) string {
		return typedHead + "    conditions:\n      - name: c\n        expression: '" + expr + "'\n"
	}
	sensitive := func(expr string) string {
		return typedHead + "    sensitive_tools:\n      - tool: x\n        rule: policy\n        condition: '" + expr + "'\n"
	}
	const cond, sens = "templates[0].conditions[0].expression", "templates[0].sensitive_tools[0].condition"
	for _, tc := range []struct {
		name, src, field, msg string
	}{
		{"misspelt request field", condition(`request.intnet == "x"`), cond,
			"undefined field 'intnet' (request has template, intent, tools, ttl, context)"},
		{"size of a duration", condition(`size(request.ttl) > 0`), cond, "no matching overload for 'size' applied to '(duration)'"},
		{"misspelt principal field", condition(`principal.subjet == "x"`), cond,
			"undefined field 'subjet' (principal has issuer, issuer_url, subject, claims)"},
		{"misspelt user field", condition(`has(user.claim)`), cond, "undefined field 'claim' (user has issuer, issuer_url, subject, claims)"},
		{"tools is a list of strings", condition(`request.tools.exists(t, t > 1)`), cond, "no matching overload for '_>_' applied to '(string, int)'"},
		{"now is a timestamp", condition(`now == "2026-01-01"`), cond, "no matching overload for '_==_' applied to '(timestamp, string)'"},
		{"misspelt variable", condition(`reqest.intent == ""`), cond, "undeclared reference to 'reqest' (did you mean 'request'?) (variables here: principal, user, request, now)"},
		{"action variables in a template condition", condition(`action.tool == "x"`), cond, "undeclared reference to 'action'"},
		{"constructing a shape", condition(`valet.Request{intent: "x"}.intent == "x"`), cond, "valet.Request cannot be constructed in a condition"},
		{"misspelt action field", sensitive(`action.tol == "x"`), sens, "undefined field 'tol' (action has tool, args, context)"},
		{"task depth is an int", sensitive(`task.depth == "1"`), sens, "no matching overload for '_==_' applied to '(int, string)'"},
		{"misspelt task field", sensitive(`task.deadlin > now`), sens,
			"undefined field 'deadlin' (task has id, template, intent, tools, deadline, depth, parent, jkt)"},
		{"action principal has no claims", sensitive(`principal.claims.x == 1`), sens, "undefined field 'claims' (principal has issuer, subject, act)"},
		{"resource labels are strings", sensitive(`resource.count > 3`), sens, "no matching overload for '_>_' applied to '(string, int)'"},
		{"request variables in an action condition", sensitive(`request.intent == "x"`), sens, "undeclared reference to 'request'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := strings.Count(tc.src, "\n") // the expression is on the last line
			_, problems := loadInline(t, tc.src, testIssuers)
			checkProblems(t, problems, []want{{"inline.yaml", line, "a", tc.field, tc.msg}})
		})
	}
}

// TestTypedConditionsEvaluate: what conditions could write over maps they
// still write over the declared shapes, with the same outcome.
func TestTypedConditionsEvaluate(t *testing.T) {
	src := typedHead + `    conditions:
      - name: fields
        expression: 'principal.issuer == "dev" && principal.issuer_url == "https://idp" && principal.subject == "agent-1" && request.template == "a"'
      - name: claims-and-context
        expression: 'principal.claims.team == "a" && request.context.ticket.priority == 3 && !("export" in request.context)'
      - name: lists
        expression: 'request.tools.all(t, t.startsWith("x")) && size(request.tools) == 2 && "x" in request.tools'
      - name: times
        expression: 'request.ttl <= duration("1m") && now > timestamp("2020-01-01T00:00:00Z") && size(request.intent) >= 5'
      - name: no-user-or-same-team
        expression: 'size(user) == 0 || (has(user.claims) && user.claims.team == principal.claims.team)'
    sensitive_tools:
      - tool: x
        rule: policy
        condition: 'action.tool == "x" && action.args.n < 5 && !has(action.context.why) && task.depth < 2 && task.deadline > now && principal.act.size() == 0 && resource.env == "staging"'
`
	set, problems := loadInline(t, src, testIssuers)
	checkProblems(t, problems, nil)
	tmpl := mustGet(t, set, "a")
	p := Identity{Issuer: "dev", IssuerURL: "https://idp", Subject: "agent-1", Claims: map[string]any{"team": "a"}}
	r := Request{Template: "a", Intent: "do it now", Tools: []string{"x", "x.y"}, TTL: time.Minute,
		Context: map[string]any{"ticket": map[string]any{"priority": 3}}}
	now := time.Now()
	if rule, err := tmpl.Check(p, nil, r, now); rule != "" || err != nil {
		t.Fatalf("no user: rule %q, err %v", rule, err)
	}
	if rule, err := tmpl.Check(p, &Identity{Issuer: "dev", Subject: "bob", Claims: map[string]any{"team": "a"}}, r, now); rule != "" || err != nil {
		t.Fatalf("same team: rule %q, err %v", rule, err)
	}
	if rule, _ := tmpl.Check(p, &Identity{Issuer: "dev", Subject: "bob", Claims: map[string]any{"team": "b"}}, r, now); rule != "no-user-or-same-team" {
		t.Fatalf("other team: rule %q", rule)
	}
	r.TTL = time.Hour
	if rule, _ := tmpl.Check(p, nil, r, now); rule != "times" {
		t.Fatalf("long ttl: rule %q", rule)
	}

	st, _ := tmpl.SensitiveTool("x")
	vars := func(n float64, env string) map[string]any {
		return map[string]any{
			"action": map[string]any{"tool": "x", "args": map[string]any{"n": n}, "context": map[string]any{}},
			"task": map[string]any{"id": "tsk_1", "template": "a", "intent": "do it", "tools": []string{"x"},
				"deadline": now.Add(time.Minute), "depth": int64(1), "parent": "tsk_0", "jkt": ""},
			"principal": map[string]any{"issuer": "dev", "subject": "agent-1", "act": []string{}},
			"resource":  map[string]any{"env": env, "id": "db"},
			"now":       now,
		}
	}
	if ok, err := st.Condition.Eval(vars(3, "staging")); !ok || err != nil {
		t.Fatalf("action condition = %v, %v; want true", ok, err)
	}
	for _, v := range []map[string]any{vars(7, "staging"), vars(3, "prod")} {
		if ok, _ := st.Condition.Eval(v); ok {
			t.Fatalf("action condition held for %v", v)
		}
	}
}

// TestPublishedTemplatesLoad: every template file in examples/ and
// deploy/ loads, and every template in a YAML block of the README or
// docs/ loads too, except that a snippet may leave out required keys
// ("# ... principals, ttl, tools as before ..."). A condition the type
// checker refuses is never published.
func TestPublishedTemplatesLoad(t *testing.T) {
	var files, snippets []File
	for _, root := range []string{"../README.md", "../docs", "../examples", "../deploy"} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			switch filepath.Ext(p) {
			case ".yaml", ".yml":
				if templateFileRE.Match(data) {
					files = append(files, File{Name: p, Data: data})
				}
			case ".md":
				for _, m := range yamlBlockRE.FindAllSubmatchIndex(data, -1) {
					block := data[m[2]:m[3]]
					if templateFileRE.Match(block) {
						line := 1 + strings.Count(string(data[:m[2]]), "\n")
						snippets = append(snippets, File{Name: p + " (block at line " + strconv.Itoa(line) + ")", Data: block})
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(files) < 2 || len(snippets) < 3 {
		t.Fatalf("found %d template files and %d snippets: the walk is broken", len(files), len(snippets))
	}
	for _, f := range files {
		if _, err := Load([]File{f}, nil); err != nil {
			t.Errorf("%s does not load:\n%v", f.Name, err)
		}
	}
	for _, f := range snippets {
		_, err := Load([]File{f}, nil)
		var te *Errors
		if err != nil && !errors.As(err, &te) {
			t.Fatalf("%s: %v", f.Name, err)
		}
		if te == nil {
			continue
		}
		for _, p := range te.Problems {
			if p.Message != "is required" {
				t.Errorf("snippet at %s: %s", f.Name, p)
			}
		}
	}
}

var (
	templateFileRE = regexp.MustCompile(`(?m)^templates:\s*\n\s*- name:`)
	yamlBlockRE    = regexp.MustCompile("(?s)```ya?ml\n(.*?)```")
)
