package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/openapi"
)

// specSchema is the JSON schema of the 2xx answer of method path in
// openapi.yaml.
func specSchema(t *testing.T, doc *openapi3.T, method, path string, status int) *openapi3.Schema {
	t.Helper()
	item := doc.Paths.Find(path)
	if item == nil {
		t.Fatalf("openapi.yaml has no path %s", path)
	}
	op := item.GetOperation(method)
	if op == nil {
		t.Fatalf("openapi.yaml has no %s %s", method, path)
	}
	resp := op.Responses.Status(status)
	if resp == nil || resp.Value == nil || resp.Value.Content.Get("application/json") == nil {
		t.Fatalf("openapi.yaml has no %d JSON answer for %s %s", status, method, path)
	}
	return resp.Value.Content.Get("application/json").Schema.Value
}

// checkJSON validates a command's -o json output against schema.
func checkJSON(t *testing.T, what, out string, schema *openapi3.Schema) map[string]any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("%s -o json is not a JSON object: %v\n%s", what, err, out)
	}
	if err := schema.VisitJSON(v, openapi3.MultiErrors()); err != nil {
		t.Fatalf("%s -o json does not match openapi.yaml: %v\n%s", what, err, out)
	}
	return v
}

func loadSpec(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(openapi.Spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	return doc
}

// TestListingJSONMatchesSpec: `valet dev --redis`; three tasks; then every
// admin listing command's -o json is validated against the schema of the
// endpoint it calls (approvals ls is checked in TestApprovalFlowThroughCLI,
// which has approvals to list). tasks ls pages newest first and says when
// more match; a freeze of an unknown agent is refused; freezing again
// without a reason keeps the reason.
func TestListingJSONMatchesSpec(t *testing.T) {
	doc := loadSpec(t)
	rd := redistest.Start(t)
	out, errOut := startRun(t, nil, "dev", "--addr", testkit.FreeAddr(t), "--redis", rd.URL(), "--audit", filepath.Join(t.TempDir(), "audit.jsonl"))
	base := waitFor(t, out, errOut, regexp.MustCompile(`Valet development server on (http://\S+)`))
	cli := func(args ...string) (int, string, string) {
		var o, e bytes.Buffer
		code := run(context.Background(), append([]string{"valet"}, args...), func(string) string { return "" }, &o, &e)
		return code, o.String(), e.String()
	}
	_, agentTok, _ := cli("dev", "token", "--agent", "agent-7", "--issuer", base+"/dev")
	var tasks []string
	for range 3 {
		resp := post(t, base+"/v1/tasks", strings.TrimSpace(agentTok),
			`{"template":"support-triage","intent":"triage ticket 4521","tools":["tickets.read"]}`)
		m := regexp.MustCompile(`"id":"(tsk_[a-z0-9]+)"`).FindStringSubmatch(resp)
		if m == nil {
			t.Fatalf("declare: %s", resp)
		}
		tasks = append(tasks, m[1])
	}
	_, admin, _ := cli("dev", "token", "--admin", "alice", "--issuer", base+"/dev")
	checked := map[string]bool{} // the commands whose -o json was checked
	adm := []string{"--server", base, "--token", strings.TrimSpace(admin)}

	// Flags after the positional arguments, as everywhere.
	code, s, e := cli(append([]string{"freeze", "agent", "agent-7", "--reason", "leaked key"}, adm...)...)
	if code != 0 || !strings.Contains(s, "leaked key") {
		t.Fatalf("freeze (%d): %s %s", code, s, e)
	}
	if code, s, e = cli(append([]string{"freeze", "agent", "agent-7"}, adm...)...); code != 0 || !strings.Contains(s, "reason: leaked key") {
		t.Fatalf("freezing again without a reason (%d): %s %s", code, s, e)
	}
	if code, _, e = cli(append([]string{"freeze", "agent", "agnet-7"}, adm...)...); code != 1 || !strings.Contains(e, `agent "agnet-7" has no task`) {
		t.Fatalf("freezing a typo (%d): %s", code, e)
	}
	if code, _, e = cli(append([]string{"freeze", "template", "no-such-template"}, adm...)...); code != 1 || !strings.Contains(e, "no template") {
		t.Fatalf("quarantining an unknown template (%d): %s", code, e)
	}
	if code, _, e = cli(append([]string{"freeze", "agent", "agent-to-come", "--force"}, adm...)...); code != 0 {
		t.Fatalf("freeze --force (%d): %s", code, e)
	}

	checkAll := func(cases []jsonCase) {
		t.Helper()
		for _, c := range cases {
			what := "valet " + strings.Join(c.args, " ")
			code, s, e := cli(append(append(c.args, "-o", "json"), adm...)...)
			if code != 0 {
				t.Fatalf("%s -o json (%d): %s", what, code, e)
			}
			checkJSON(t, what, s, specSchema(t, doc, c.method, c.path, c.status))
			checked[c.command()] = true
		}
	}
	checkAll([]jsonCase{
		{[]string{"tasks", "ls"}, "GET", "/v1/admin/tasks", 200},
		{[]string{"tasks", "ls", "--limit", "2"}, "GET", "/v1/admin/tasks", 200},
		{[]string{"tasks", "show", tasks[0]}, "GET", "/v1/admin/tasks/{id}", 200},
		{[]string{"tasks", "timeline", tasks[0]}, "GET", "/v1/admin/tasks/{id}/timeline", 200},
		{[]string{"tasks", "rollback", tasks[0], "--dry-run"}, "GET", "/v1/admin/tasks/{id}/rollback", 200},
		{[]string{"controls", "ls"}, "GET", "/v1/admin/controls", 200},
		{[]string{"revoke", "--agent", "nobody", "--dry-run"}, "POST", "/v1/admin/revocations", 200},
	})

	// The agent inventory: agent-7 is listed (its sightings are written
	// within a second), shown, and its freeze by label previewed.
	var agents struct {
		Agents []struct{ ID, Subject string }
	}
	testkit.Eventually(t, func() bool {
		_, s, _ := cli(append([]string{"agents", "ls", "-o", "json"}, adm...)...)
		return json.Unmarshal([]byte(s), &agents) == nil && len(agents.Agents) > 0
	}, "agent-7 never reached the inventory")
	if agents.Agents[0].Subject != "agent-7" {
		t.Fatalf("agents ls: %+v", agents)
	}
	checkAll([]jsonCase{
		{[]string{"agents", "ls"}, "GET", "/v1/admin/agents", 200},
		{[]string{"agents", "ls", "--sort", "subject", "--limit", "1", "--since", "1h", "--subject-prefix", "agent-"}, "GET", "/v1/admin/agents", 200},
		{[]string{"agents", "show", agents.Agents[0].ID}, "GET", "/v1/admin/agents/{id}", 200},
	})
	if code, s, e = cli(append([]string{"agents", "show", agents.Agents[0].ID}, adm...)...); code != 0 || !strings.Contains(s, "agent-7") || !strings.Contains(s, "LIVE TASK") {
		t.Fatalf("agents show (%d): %s %s", code, s, e)
	}
	// valet dev keeps no label rules: the label selects no agent, which is
	// said plainly.
	if code, s, e = cli(append([]string{"freeze", "--label", "owner=nobody", "--dry-run"}, adm...)...); code != 0 || !strings.Contains(s, "would freeze 0 agents") {
		t.Fatalf("freeze --label --dry-run (%d): %s %s", code, s, e)
	}

	// Paging: newest first, two then one, and the table says more exist.
	_, s, _ = cli(append([]string{"tasks", "ls", "--limit", "2", "-o", "json"}, adm...)...)
	var page struct {
		Tasks      []struct{ ID string }
		NextCursor string `json:"next_cursor"`
	}
	if json.Unmarshal([]byte(s), &page) != nil || len(page.Tasks) != 2 || page.NextCursor == "" {
		t.Fatalf("first page: %s", s)
	}
	_, s, _ = cli(append([]string{"tasks", "ls", "--limit", "2", "--cursor", page.NextCursor, "-o", "json"}, adm...)...)
	var page2 struct {
		Tasks      []struct{ ID string }
		NextCursor string `json:"next_cursor"`
	}
	if json.Unmarshal([]byte(s), &page2) != nil || len(page2.Tasks) != 1 || page2.NextCursor != "" {
		t.Fatalf("second page: %s", s)
	}
	got := []string{page.Tasks[0].ID, page.Tasks[1].ID, page2.Tasks[0].ID}
	if got[0] != tasks[2] || got[1] != tasks[1] || got[2] != tasks[0] {
		t.Fatalf("pages %v, want newest first %v", got, tasks)
	}
	if _, s, _ = cli(append([]string{"tasks", "ls", "--limit", "2"}, adm...)...); !strings.Contains(s, "more tasks match: add --cursor") {
		t.Fatalf("the table does not say more tasks match:\n%s", s)
	}

	// The commands that change things, last: a control set and lifted, a
	// quarantine that revokes (its job), a bulk revocation (its job).
	checkAll([]jsonCase{
		{[]string{"freeze", "agent", "agent-8", "--force"}, "POST", "/v1/admin/controls", 201},
		{[]string{"unfreeze", "agent", "agent-8"}, "DELETE", "/v1/admin/controls", 200},
		{[]string{"freeze", "template", "support-triage", "--revoke"}, "GET", "/v1/admin/revocations/{id}", 200},
		{[]string{"revoke", "--agent", "agent-7"}, "GET", "/v1/admin/revocations/{id}", 200},
	})
	if code, _, e := cli(append([]string{"tasks", "rollback", tasks[0], "-o", "json"}, adm...)...); code != 2 || !strings.Contains(e, "--dry-run") {
		t.Errorf("tasks rollback -o json without --dry-run: exit %d, want 2 and a word on --dry-run: %s", code, e)
	}

	// Every command of the table with -o is checked here, or (approvals,
	// an approver client's) in TestApprovalFlowThroughCLI.
	for _, p := range []string{"approvals ls", "approvals approve", "approvals deny"} {
		checked[p] = true
	}
	walkCommands(commandTable(), "", func(path string, c command) {
		if fs := describe(c); fs != nil && fs.Lookup("o") != nil && !checked[path] {
			t.Errorf("valet %s takes -o json, but no test checks its output against openapi.yaml", path)
		}
	})
}

// jsonCase is a command whose -o json output must match the schema of the
// answer of method path with status in openapi.yaml.
type jsonCase struct {
	args         []string
	method, path string
	status       int
}

// command is the case's path in the command table ("tasks ls").
func (c jsonCase) command() string {
	if len(c.args) > 1 && !strings.HasPrefix(c.args[1], "-") && len(findSubs(c.args[0])) > 0 {
		return c.args[0] + " " + c.args[1]
	}
	return c.args[0]
}

// findSubs is the verbs of the top-level command name.
func findSubs(name string) []command {
	c, _ := findCommand(commandTable(), name)
	return c.subs
}
