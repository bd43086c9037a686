package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/valet-dev/valet/internal/testkit"
)

// declareStatus declares a task on a served Valet and returns the status.
func (v *servedValet) declareStatus(t *testing.T, template string) int {
	t.Helper()
	status, _ := v.declare(t, template)
	return status
}

// declare declares a task for agent-7 with one tool and returns the status
// and, on success, the task token.
func (v *servedValet) declare(t *testing.T, template string) (int, string) {
	t.Helper()
	resp, err := http.Post(v.idpURL+"/token?agent=agent-7", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		Token string `json:"identity_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	body := `{"template":"` + template + `","intent":"triage ticket 4521","tools":["tickets.read"]}`
	req, _ := http.NewRequest(http.MethodPost, v.base+"/v1/tasks", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Credentials []map[string]any `json:"credentials"`
	}
	if resp.StatusCode != http.StatusCreated {
		return resp.StatusCode, ""
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out.Credentials[0]["access_token"].(string)
}

const extraTemplate = `
templates:
  - name: extra
    description: Added while serving.
    principals: [{issuer: dev}]
    ttl: {default: 1m, max: 2m}
    tools: [tickets.read]
    audiences: [https://tools.example.com]
`

func TestServeReloadsTemplatesAndKeepsLastGoodSet(t *testing.T) {
	v := startServe(t, "reload-test-secret-0123456789")
	if got := v.declareStatus(t, "extra"); got != http.StatusForbidden {
		t.Fatalf("template extra before it exists: %d", got)
	}
	writeFile(t, v.templates, "extra.yaml", extraTemplate)
	testkit.Eventually(t, func() bool { return v.declareStatus(t, "extra") == http.StatusCreated }, "the file watch loads template extra")

	// A broken file: the reload fails and the last good set stays.
	writeFile(t, v.templates, "extra.yaml", strings.Replace(extraTemplate, "max: 2m", "max: banana", 1))
	testkit.Eventually(t, func() bool {
		return strings.Contains(v.stderr.String(), "template reload failed") && strings.Contains(v.stderr.String(), "extra.yaml")
	}, "the failed reload is logged")
	if got := v.declareStatus(t, "extra"); got != http.StatusCreated {
		t.Fatalf("after a failed reload the last good set must still serve: %d", got)
	}
	if got := v.declareStatus(t, "support-triage"); got != http.StatusCreated {
		t.Fatalf("support-triage after a failed reload: %d", got)
	}

	// Removing the file removes the template.
	if err := os.Remove(filepath.Join(v.templates, "extra.yaml")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, func() bool { return v.declareStatus(t, "extra") == http.StatusForbidden }, "template extra goes away")
}

func TestServeRefusesInvalidTemplates(t *testing.T) {
	dir := t.TempDir()
	cfg, err := os.ReadFile("../../examples/serve.yaml")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "broken.yaml", strings.Replace(extraTemplate, "tools: [tickets.read]", "tools: []", 1))
	key := filepath.Join(dir, "k.pem")
	var out bytes.Buffer
	if run(context.Background(), []string{"valet", "keys", "generate", "--out", key}, os.Getenv, &out, &out) != 0 {
		t.Fatal(out.String())
	}
	c := strings.NewReplacer("paths: [templates]", "paths: ["+dir+"]", "/tmp/valet-demo/signing.pem", key,
		"/tmp/valet-demo/audit.jsonl", filepath.Join(dir, "audit.jsonl")).Replace(string(cfg))
	p := writeFile(t, dir, "valet.yaml", c)
	var stdout, stderr bytes.Buffer
	env := map[string]string{"VALET_TOOL_SERVER_SECRET": "reload-test-secret-0123456789"}
	code := run(context.Background(), []string{"valet", "serve", "--config", p}, func(k string) string { return env[k] }, &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "broken.yaml") || !strings.Contains(stderr.String(), "templates[0].tools") {
		t.Fatalf("serve with an invalid template: exit %d\n%s", code, stderr.String())
	}
}
