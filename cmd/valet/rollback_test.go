package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/valet-dev/valet/examples/toolserver"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/verify"
)

// TestRollbackThroughCLI: `valet dev --redis` and the example tool server;
// an agent posts two comments; `valet tasks rollback --dry-run` lists both
// undo steps newest first and calls nothing; `valet tasks rollback` calls
// both (the comments are gone); a second run skips them as done.
func TestRollbackThroughCLI(t *testing.T) {
	rd := redistest.Start(t)
	out, errOut := startRun(t, nil, "dev", "--addr", testkit.FreeAddr(t), "--redis", rd.URL(), "--rollback-hosts", "127.0.0.1",
		"--audit", filepath.Join(t.TempDir(), "audit.jsonl"))
	base := waitFor(t, out, errOut, regexp.MustCompile(`Valet development server on (http://\S+)`))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	v, err := verify.New(verify.Config{Issuer: base, Audience: "https://tools.example.com", ClientID: "tool-server",
		ClientSecret: "dev-secret-not-for-production"})
	if err != nil {
		t.Fatal(err)
	}
	go v.Run(ctx)
	tsrv := toolserver.New(v)
	ts := httptest.NewServer(tsrv)
	t.Cleanup(ts.Close)

	cli := func(args ...string) (int, string) {
		var o, e bytes.Buffer
		code := run(ctx, append([]string{"valet"}, args...), func(string) string { return "" }, &o, &e)
		return code, o.String() + e.String()
	}
	code, agentTok := cli("dev", "token", "--agent", "agent-7", "--issuer", base+"/dev")
	if code != 0 {
		t.Fatalf("dev token: %s", agentTok)
	}
	resp := post(t, base+"/v1/tasks", strings.TrimSpace(agentTok),
		`{"template":"support-triage","intent":"triage ticket 4521","tools":["tickets.read","tickets.comment"]}`)
	task := regexp.MustCompile(`"id":"(tsk_[a-z0-9]+)"`).FindStringSubmatch(resp)
	tok := regexp.MustCompile(`"access_token":"([^"]+)"`).FindStringSubmatch(resp)
	if task == nil || tok == nil {
		t.Fatalf("declare: %s", resp)
	}
	read, _ := http.NewRequest(http.MethodGet, ts.URL+"/tickets/1", nil) // a call with no side effect
	read.Header.Set("Authorization", "Bearer "+tok[1])
	if r, err := http.DefaultClient.Do(read); err != nil || r.StatusCode != 200 {
		t.Fatalf("reading the ticket: %v %v", r, err)
	} else {
		r.Body.Close()
	}
	for range 2 {
		if r := post(t, ts.URL+"/tickets/1/comments", tok[1], "looked at it"); !strings.Contains(r, `"id":"c_`) {
			t.Fatalf("comment: %s", r)
		}
	}
	testkit.Eventually(t, func() bool { return v.Reports().Sent >= 3 }, "3 tool-call reports sent")
	_, admin := cli("dev", "token", "--admin", "alice", "--issuer", base+"/dev")
	admin = strings.TrimSpace(admin)

	code, s := cli("tasks", "rollback", task[1], "--dry-run", "--server", base, "--token", admin)
	if code != 0 || !strings.Contains(s, "dry run: 2 undo steps, none called") || strings.Count(s, "tickets.comment") != 2 || !strings.Contains(s, "allowed") {
		t.Fatalf("dry run (%d):\n%s", code, s)
	}
	if n := len(tsrv.Comments("1")); n != 2 {
		t.Fatalf("the dry run removed comments: %d left", n)
	}
	t.Logf("valet tasks rollback %s --dry-run:\n%s", task[1], s)
	code, s = cli("tasks", "rollback", task[1], "--server", base, "--token", admin)
	if code != 0 || strings.Count(s, ": done (DELETE ") != 2 {
		t.Fatalf("rollback (%d):\n%s", code, s)
	}
	if n := len(tsrv.Comments("1")); n != 0 {
		t.Fatalf("%d comments left after the rollback", n)
	}
	t.Logf("valet tasks rollback %s:\n%s", task[1], s)
	code, s = cli("tasks", "rollback", task[1], "--server", base, "--token", admin)
	if code != 0 || strings.Count(s, "already done, skipped") != 2 {
		t.Fatalf("second rollback (%d):\n%s", code, s)
	}
	code, s = cli("tasks", "timeline", task[1], "--server", base, "--token", admin)
	if code != 0 || strings.Count(s, "tool.called") != 3 || !strings.Contains(s, "rollback.step") ||
		!strings.Contains(s, "tickets.comment added comment") || strings.Contains(s, "<nil>") {
		t.Fatalf("timeline (%d):\n%s", code, s)
	}
}

func post(t *testing.T, url, bearer, body string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+bearer)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}

// TestRollbackAsksBeforeRevokedReporters guards issue 9 #6 and the CLI
// escaping low: an agent files, while live, a step whose undo it chose,
// with terminal control sequences in its side effect; after the task is
// revoked, `valet tasks rollback --dry-run` shows who reported the step
// (REVOKED), the URL without its query and the body preview, all escaped;
// a run refuses without a terminal, refuses on "n", and runs with --yes.
func TestRollbackAsksBeforeRevokedReporters(t *testing.T) {
	rd := redistest.Start(t)
	out, errOut := startRun(t, nil, "dev", "--addr", testkit.FreeAddr(t), "--redis", rd.URL(), "--rollback-hosts", "127.0.0.1",
		"--audit", filepath.Join(t.TempDir(), "audit.jsonl"))
	base := waitFor(t, out, errOut, regexp.MustCompile(`Valet development server on (http://\S+)`))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var calls atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }))
	t.Cleanup(target.Close)

	cli := func(args ...string) (int, string) {
		var o, e bytes.Buffer
		code := run(ctx, append([]string{"valet"}, args...), func(string) string { return "" }, &o, &e)
		return code, o.String() + e.String()
	}
	_, agentTok := cli("dev", "token", "--agent", "agent-7", "--issuer", base+"/dev")
	resp := post(t, base+"/v1/tasks", strings.TrimSpace(agentTok),
		`{"template":"support-triage","intent":"triage ticket 4521","tools":["tickets.read","tickets.comment"]}`)
	task := regexp.MustCompile(`"id":"(tsk_[a-z0-9]+)"`).FindStringSubmatch(resp)
	tok := regexp.MustCompile(`"access_token":"([^"]+)"`).FindStringSubmatch(resp)
	if task == nil || tok == nil {
		t.Fatalf("declare: %s", resp)
	}
	rep, _ := json.Marshal(map[string]any{"tool": "tickets.comment", "outcome": "ok",
		"side_effect": "\x1b[31mfixed\x1b[0m\r\a ok \u202eexe.txt",
		"undo":        map[string]any{"method": "POST", "url": target.URL + "/undo?key=qs-s3cret", "body": `{"token":"b-s3cret","id":"\u001b]0;x\u0007"}`}})
	if r := post(t, base+"/v1/tasks/"+task[1]+"/events", tok[1], string(rep)); !strings.Contains(r, `"reported_with":"task_token"`) {
		t.Fatalf("report: %s", r)
	}
	_, admin := cli("dev", "token", "--admin", "alice", "--issuer", base+"/dev")
	admin = strings.TrimSpace(admin)
	if code, s := cli("revoke", "--task", task[1], "--reason", "suspect", "--server", base, "--token", admin); code != 0 {
		t.Fatalf("revoke (%d): %s", code, s)
	}

	code, s := cli("tasks", "rollback", task[1], "--dry-run", "--server", base, "--token", admin)
	if code != 0 || !strings.Contains(s, "agent-7 (task_token) REVOKED") || !strings.Contains(s, "POST "+target.URL+"/undo?…") ||
		!strings.Contains(s, `\x1b[31mfixed`) || !strings.Contains(s, `\u202e`) || !strings.Contains(s, `"token":"[redacted]"`) {
		t.Fatalf("dry run (%d):\n%s", code, s)
	}
	for _, bad := range []string{"\x1b", "\r", "\a", "\u202e", "\u0007", "qs-s3cret", "b-s3cret"} {
		if strings.Contains(s, bad) {
			t.Fatalf("dry run printed %q:\n%s", bad, s)
		}
	}
	t.Logf("valet tasks rollback %s --dry-run:\n%s", task[1], s)
	code, s = cli("tasks", "rollback", task[1], "--dry-run", "-o", "json", "--server", base, "--token", admin)
	var plan struct{ Steps []map[string]any } // the API's answer as it is
	if code != 0 || json.Unmarshal([]byte(s), &plan) != nil || len(plan.Steps) != 1 || !strings.Contains(plan.Steps[0]["side_effect"].(string), "\u202e") {
		t.Fatalf("dry run -o json (%d):\n%s", code, s)
	}
	for _, bad := range []string{"\x1b", "\r", "\a", "\u202e"} {
		if strings.Contains(s, bad) {
			t.Fatalf("dry run -o json printed %q:\n%s", bad, s)
		}
	}

	defer func(old func(string, io.Writer) (bool, bool)) { askYes = old }(askYes)
	askYes = func(string, io.Writer) (bool, bool) { return false, false } // not a terminal
	if code, s := cli("tasks", "rollback", task[1], "--server", base, "--token", admin); code == 0 || !strings.Contains(s, "--yes") {
		t.Fatalf("rollback without a terminal (%d):\n%s", code, s)
	}
	askYes = func(string, io.Writer) (bool, bool) { return false, true } // "n"
	if code, s := cli("tasks", "rollback", task[1], "--server", base, "--token", admin); code == 0 || !strings.Contains(s, "not confirmed") {
		t.Fatalf("rollback answered no (%d):\n%s", code, s)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d undo calls before confirmation", n)
	}
	askYes = func(string, io.Writer) (bool, bool) { t.Error("asked despite --yes"); return false, true }
	if code, s := cli("tasks", "rollback", task[1], "--yes", "--server", base, "--token", admin); code != 0 || !strings.Contains(s, ": done (POST ") {
		t.Fatalf("rollback --yes (%d):\n%s", code, s)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d undo calls, want 1", n)
	}
}
