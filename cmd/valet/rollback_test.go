package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/examples/toolserver"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/verify"
)

// TestRollbackThroughCLI: `valet dev --redis` and the example tool server;
// an agent posts two comments; `valet tasks rollback --dry-run` lists both
// undo steps newest first and calls nothing; `valet tasks rollback` calls
// both (the comments are gone); a second run skips them as done.
func TestRollbackThroughCLI(t *testing.T) {
	rd := redistest.Start(t)
	out, errOut := startRun(t, nil, "dev", "--addr", freeAddr(t), "--redis", rd.URL(), "--rollback-hosts", "127.0.0.1",
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
	for range 2 {
		if r := post(t, ts.URL+"/tickets/1/comments", tok[1], "looked at it"); !strings.Contains(r, `"id":"c_`) {
			t.Fatalf("comment: %s", r)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for v.Reports().Sent < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("reports: %+v", v.Reports())
		}
		time.Sleep(10 * time.Millisecond) // bounded polling of real background work
	}
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
	if code != 0 || strings.Count(s, "tool.called") != 2 || !strings.Contains(s, "rollback.step") {
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
