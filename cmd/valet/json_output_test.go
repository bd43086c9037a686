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

	for _, c := range []struct {
		args         []string
		method, path string
	}{
		{[]string{"tasks", "ls"}, "GET", "/v1/admin/tasks"},
		{[]string{"tasks", "ls", "--limit", "2"}, "GET", "/v1/admin/tasks"},
		{[]string{"tasks", "show", tasks[0]}, "GET", "/v1/admin/tasks/{id}"},
		{[]string{"tasks", "timeline", tasks[0]}, "GET", "/v1/admin/tasks/{id}/timeline"},
		{[]string{"tasks", "rollback", tasks[0], "--dry-run"}, "GET", "/v1/admin/tasks/{id}/rollback"},
		{[]string{"controls", "ls"}, "GET", "/v1/admin/controls"},
		{[]string{"revoke", "--agent", "nobody", "--dry-run"}, "POST", "/v1/admin/revocations"},
	} {
		what := "valet " + strings.Join(c.args, " ")
		code, s, e := cli(append(append(c.args, "-o", "json"), adm...)...)
		if code != 0 {
			t.Fatalf("%s -o json (%d): %s", what, code, e)
		}
		checkJSON(t, what, s, specSchema(t, doc, c.method, c.path, 200))
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
}
