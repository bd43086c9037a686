package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/valet-dev/valet/internal/devidp"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
)

// consoleDev is `valet dev --redis` with the console, started and given
// tasks exactly as docs/incident-response.md's walk-through does: agent-7's
// task (with an intent holding a script) delegated to agent-sub, and
// agent-8's task, which no freeze of agent-7 may touch.
type consoleDev struct {
	base                 string
	root, child, bystand string // task ids
}

func startConsoleDev(t *testing.T) consoleDev {
	t.Helper()
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found on PATH: install the Debian package %s", tool, tool)
		}
	}
	start := docBlock(t, "docs/incident-response.md", "console-dev")
	devAt := strings.Index(start, "\nvalet dev ")
	if devAt < 0 {
		t.Fatalf("the walk-through does not start `valet dev`:\n%s", start)
	}
	dir := t.TempDir()
	prepare := exec.Command("bash", "-euo", "pipefail", "-c", start[:devAt])
	prepare.Dir = dir
	if out, err := prepare.CombinedOutput(); err != nil {
		t.Fatalf("the walk-through before `valet dev`: %v\n%s", err, out)
	}
	rd := redistest.Start(t)
	addr := testkit.FreeAddr(t)
	devLine := strings.TrimSpace(start[devAt:])
	if !strings.Contains(devLine, "--redis redis://127.0.0.1:6379/0") {
		t.Fatalf("the walk-through's %q does not use Redis", devLine)
	}
	args := strings.Fields(strings.NewReplacer("redis://127.0.0.1:6379/0", rd.URL(), "./my-templates", filepath.Join(dir, "my-templates")).Replace(devLine))[1:]
	args = append(args, "--addr", addr, "--audit", filepath.Join(dir, "audit.jsonl"))
	out, errOut := startRun(t, nil, args...)
	d := consoleDev{base: waitFor(t, out, errOut, regexp.MustCompile(`Valet development server on (http://\S+)`))}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("valet dev's log:\n%s", errOut.String())
		}
	})
	tasks := exec.Command("bash", "-euo", "pipefail", "-c", strings.ReplaceAll(docBlock(t, "docs/incident-response.md", "console-tasks"),
		"http://127.0.0.1:8080", d.base))
	tasks.Dir = dir
	if out, err := tasks.CombinedOutput(); err != nil {
		t.Fatalf("the walk-through's tasks: %v\n%s", err, out)
	}
	for _, tk := range adminTasks(t, d.base, "agent-7") {
		if tk.Parent == "" {
			d.root = tk.ID
		} else {
			d.child = tk.ID
		}
	}
	if ts := adminTasks(t, d.base, "agent-8"); len(ts) == 1 {
		d.bystand = ts[0].ID
	}
	if d.root == "" || d.child == "" || d.bystand == "" {
		t.Fatalf("the walk-through made root %q, child %q, agent-8's %q; want all three", d.root, d.child, d.bystand)
	}
	return d
}

// poll waits until expr is true in the page, across navigations.
func poll(expr string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		for {
			if ok, err := chromedp.Evaluate[bool](expr)(ctx, t); err == nil && ok {
				return chromedp.Void{}, nil
			}
			select {
			case <-ctx.Done():
				return chromedp.Void{}, fmt.Errorf("waiting for %s: %w", expr, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func css(s string) chromedp.CSS { return chromedp.CSS(s) }
func id(s string) chromedp.ID   { return chromedp.ID(s) }

// chromium finds Debian's chromium, or skips the test saying how to get it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("chromium not found on PATH: the console's browser tests need it (apt-get install chromium; .ci/run installs it)")
	return ""
}

// screenshots is the folder the browser tests write their screenshots to:
// $VALET_SCREENSHOTS, or console/testdata/screenshots (git-ignored).
func screenshots(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("VALET_SCREENSHOTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "console", "testdata", "screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser is one headless chromium with a profile of its own.
func browser(t *testing.T, exe string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.WindowSize(1280, 1000),
		chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// step bounds one browser step.
const step = 30 * time.Second

// do runs browser steps; on failure it reports where the page was.
func do(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, step)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		loc, _ := chromedp.Run(lctx, chromedp.Location())
		body, _ := chromedp.Run(lctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		t.Fatalf("%s: %v\nat %s:\n%s", what, err, loc, body)
	}
}

// value runs one browser action that returns a value.
func value[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, step)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

func js[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	return value(t, ctx, expr, chromedp.Evaluate[T](expr))
}

func text(t *testing.T, ctx context.Context, id string) string {
	t.Helper()
	return value(t, ctx, "text of #"+id, chromedp.Text(chromedp.ID(id)))
}

func shoot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png := value(t, ctx, "screenshot "+name, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", filepath.Join(dir, name))
}

// sessionCookie is the console's session cookie in the browser.
func sessionCookie(t *testing.T, ctx context.Context) *network.Cookie {
	t.Helper()
	res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range res.Cookies {
		if c.Name == "valet_console" {
			return c
		}
	}
	t.Fatalf("no valet_console cookie in %v", res.Cookies)
	return nil
}

// forgePost sends a form to the console as a forger would: with the victim's
// session cookie but without (or with a wrong) CSRF token.
func forgePost(t *testing.T, base, path, cookie string, form url.Values) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: "valet_console", Value: cookie})
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// adminGet reads path of the admin API as the development admin, to check
// what the browser saw against the ledger.
func adminGet(t *testing.T, base, path string, body any) {
	t.Helper()
	resp, err := http.Post(base+"/dev/token?admin=ops", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		Token string `json:"identity_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	req, _ := http.NewRequest(http.MethodGet, base+path, nil)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(body); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("admin GET %s: %v (status %d)", path, err, resp.StatusCode)
	}
}

type adminTask struct {
	ID     string `json:"id"`
	State  string `json:"state"`
	Parent string `json:"parent"`
	Agent  string `json:"agent"`
}

// adminTasks lists the tasks whose chain holds agent.
func adminTasks(t *testing.T, base, agent string) []adminTask {
	t.Helper()
	var body struct {
		Tasks []adminTask `json:"tasks"`
	}
	adminGet(t, base, "/v1/admin/tasks?agent="+url.QueryEscape(agent), &body)
	return body.Tasks
}

func adminTaskState(t *testing.T, base, id string) string {
	t.Helper()
	var body struct {
		Task adminTask `json:"task"`
	}
	adminGet(t, base, "/v1/admin/tasks/"+url.PathEscape(id), &body)
	return body.Task.State
}

// TestConsoleBrowser walks the console as a responder would, in a real
// headless chromium against `valet dev --redis`: sign in, find an agent,
// open its task (an agent-written script in the intent renders as text),
// see the delegation tree, dry-run and run a freeze, watch the progress bar
// finish and the agent's tasks turn revoked. A forged form post is refused,
// and a viewer sees no action and cannot post one.
func TestConsoleBrowser(t *testing.T) {
	exe := chromium(t)
	d := startConsoleDev(t)
	shots := screenshots(t)
	ctx := browser(t, exe)

	// Sign in (authorization code + PKCE at the development issuer).
	signIn(t, ctx, d.base, "ops", devidp.AdminGroup)
	do(t, ctx, "the overview after sign-in", chromedp.WaitVisible(id("who")))
	if who, role := text(t, ctx, "who"), text(t, ctx, "role"); who != "ops" || role != "admin" {
		t.Fatalf("signed in as %q with role %q, want ops as admin", who, role)
	}
	ck := sessionCookie(t, ctx)
	if !ck.HTTPOnly || ck.SameSite != network.CookieSameSiteStrict || ck.Path != "/console/" {
		t.Errorf("session cookie: HttpOnly %t, SameSite %s, path %s; want HttpOnly, Strict, /console/", ck.HTTPOnly, ck.SameSite, ck.Path)
	}
	if stored := js[string](t, ctx, `JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie`); stored != "{}{}" {
		t.Errorf("the page can read %q from storage or cookies; want nothing", stored)
	}
	// The live view shows the grants as the audit trail records them.
	do(t, ctx, "the live view", chromedp.WaitVisible(css(`#live tbody tr`)))
	shoot(t, ctx, shots, "01-overview-live.png")

	// Find the agent.
	do(t, ctx, "finding agent-7", chromedp.Navigate(d.base+"/console/agents"), chromedp.WaitVisible(id("agentq")),
		chromedp.SendKeys(id("agentq"), "agent-7"), chromedp.Click(id("agentsearch")), poll(`location.search.includes("q=agent-7")`),
		chromedp.WaitVisible(css(`#agents a.agent`)))
	if names := js[[]string](t, ctx, `[...document.querySelectorAll("#agents a.agent")].map(a => a.textContent)`); len(names) != 1 || names[0] != "agent-7" {
		t.Fatalf("searching agent-7 lists %v", names)
	}
	shoot(t, ctx, shots, "02-agents-search.png")
	do(t, ctx, "opening agent-7", chromedp.Click(css(`#agents a.agent`)), chromedp.WaitVisible(id("agentname")))
	shoot(t, ctx, shots, "03-agent.png")

	// Open its task: the intent's script is text, and the tree shows the
	// delegation to agent-sub.
	do(t, ctx, "opening the task", chromedp.Click(css(`a[href="/console/tasks/`+d.root+`"]`)), chromedp.WaitVisible(id("tree")))
	intent := text(t, ctx, "intent")
	inside := js[int](t, ctx, `document.querySelectorAll("#intent *").length`)

	if !strings.Contains(intent, "<script>alert(1)</script>") || inside != 0 {
		t.Errorf("intent renders as %q with %d elements inside; want the script as text, no element", intent, inside)
	}
	nodes := js[int](t, ctx, `document.querySelectorAll("#tree a.node").length`)
	edges := js[int](t, ctx, `document.querySelectorAll("#tree line.edge").length`)
	if nodes != 2 || edges != 1 {
		t.Errorf("delegation tree has %d nodes and %d edges; want 2 and 1 (agent-7 → agent-sub)", nodes, edges)
	}
	if !js[bool](t, ctx, `!!document.querySelector('#tree a.node[data-task="`+d.child+`"]')`) {
		t.Errorf("the tree has no node for the child task %s", d.child)
	}
	shoot(t, ctx, shots, "04-task-tree.png")

	// A forged post (the session cookie, no or a wrong CSRF token) changes nothing.
	for _, form := range []url.Values{
		{"kind": {"freeze_agent"}, "target": {"agent-8"}, "issuer": {"dev"}, "reason": {"forged"}},
		{"kind": {"freeze_agent"}, "target": {"agent-8"}, "issuer": {"dev"}, "reason": {"forged"}, "csrf": {"not-the-token"}},
	} {
		if status, body := forgePost(t, d.base, "/console/act", ck.Value, form); status != http.StatusForbidden || !strings.Contains(body, "CSRF") {
			t.Errorf("forged post (csrf %q) answered %d:\n%s", form.Get("csrf"), status, body)
		}
	}
	if s := adminTaskState(t, d.base, d.bystand); s != "active" {
		t.Fatalf("agent-8's task is %s after the forged posts; want active", s)
	}
	req, _ := http.NewRequest(http.MethodGet, d.base+"/console/", nil)
	req.AddCookie(&http.Cookie{Name: "valet_console", Value: ck.Value})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); resp.StatusCode != http.StatusOK || !strings.Contains(csp, "default-src 'self'") ||
		!strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("console page: %d, CSP %q, X-Frame-Options %q", resp.StatusCode, csp, resp.Header.Get("X-Frame-Options"))
	}

	// Dry-run the freeze of agent-7: two tasks (its own and agent-sub's
	// delegated one), two agents; then run it.
	do(t, ctx, "previewing the freeze", chromedp.Navigate(d.base+"/console/agents?q=agent-7"), chromedp.WaitVisible(css(`#agents a.agent`)),
		chromedp.Click(css(`#agents a.agent`)), chromedp.WaitVisible(id("freeze")),
		chromedp.SendKeys(id("reason"), "suspected prompt injection in ticket 4521"),
		chromedp.Click(id("freeze")), chromedp.WaitVisible(id("run")))
	if tasks, agents := text(t, ctx, "pv-tasks"), text(t, ctx, "pv-agents"); tasks != "2" || agents != "2" {
		t.Errorf("the dry run counts %s tasks of %s agents; want 2 of 2", tasks, agents)
	}
	if s := adminTaskState(t, d.base, d.root); s != "active" {
		t.Fatalf("the dry run left agent-7's task %s; want active", s)
	}
	shoot(t, ctx, shots, "05-freeze-dry-run.png")
	do(t, ctx, "running the freeze", chromedp.Click(id("run")), chromedp.WaitVisible(id("progress")), chromedp.WaitVisible(css("#job.done")))
	if state, pct := text(t, ctx, "jobstate"), js[int](t, ctx, `document.getElementById("progress").value`); state != "done" || pct != 100 {
		t.Errorf("the job ends %q at %d%%; want done at 100%%", state, pct)
	}
	shoot(t, ctx, shots, "06-freeze-job-done.png")
	do(t, ctx, "the agent's tasks", chromedp.Click(id("jobtaskslink")), chromedp.WaitVisible(css("table.tasks")))
	states := js[[]string](t, ctx, `[...document.querySelectorAll("table.tasks tr.task")].map(r => r.dataset.state)`)
	if len(states) != 2 || states[0] != "revoked" || states[1] != "revoked" {
		t.Errorf("agent-7's tasks after the freeze: %v; want 2 revoked", states)
	}
	shoot(t, ctx, shots, "07-tasks-revoked.png")
	// The live view shows the revocation; the audit chain verifies.
	do(t, ctx, "the revocation in the live view", chromedp.Navigate(d.base+"/console/"),
		poll(`[...document.querySelectorAll("#live td")].some(td => td.textContent === "task.revoked")`))
	shoot(t, ctx, shots, "08-overview-after-freeze.png")
	do(t, ctx, "the audit chain", chromedp.Navigate(d.base+"/console/audit"), chromedp.WaitVisible(id("chainstatus")))
	if st := text(t, ctx, "chainstatus"); !strings.HasPrefix(st, "Verified") {
		t.Errorf("audit chain status %q; want Verified", st)
	}
	if seq := js[int](t, ctx, `Number(document.querySelector("#chains tbody td:nth-child(2)").textContent)`); seq < 5 {
		t.Errorf("the chain is verified up to sequence %d; want the grants, the freeze and the revocations (5 or more)", seq)
	}
	shoot(t, ctx, shots, "09-audit-chain.png")
	// Search by state: only agent-8's task is still active.
	do(t, ctx, "searching active tasks", chromedp.Navigate(d.base+"/console/tasks?state=active"), chromedp.WaitVisible(css("table.tasks")))
	if ids := js[[]string](t, ctx, `[...document.querySelectorAll("table.tasks tr.task a")].map(a => a.textContent)`); len(ids) != 1 || ids[0] != d.bystand {
		t.Errorf("active tasks after the freeze: %v; want only agent-8's %s", ids, d.bystand)
	}
	do(t, ctx, "the approvals inbox", chromedp.Navigate(d.base+"/console/approvals"), chromedp.WaitVisible(id("approvals")))
	for tid, want := range map[string]string{d.root: "revoked", d.child: "revoked", d.bystand: "active"} {
		if s := adminTaskState(t, d.base, tid); s != want {
			t.Errorf("task %s is %s in the ledger; want %s", tid, s, want)
		}
	}

	// A viewer: no action buttons, and a post with its own valid CSRF token
	// is refused by the role.
	vctx := browser(t, exe)
	signIn(t, vctx, d.base, "watcher", devidp.ViewerGroup)
	do(t, vctx, "the viewer's agent page", chromedp.WaitVisible(id("role")))
	vrole := text(t, vctx, "role")
	do(t, vctx, "the viewer's agent page", chromedp.Navigate(d.base+"/console/agents?q=agent-8"), chromedp.WaitVisible(css(`#agents a.agent`)),
		chromedp.Click(css(`#agents a.agent`)), chromedp.WaitVisible(id("agentname")))
	actions := js[int](t, vctx, `document.querySelectorAll('form[method="post"]:not([action="/console/signout"]), button.action, button.danger, #freeze').length`)
	if vrole != "viewer" || actions != 0 {
		t.Errorf("viewer (role %q) sees %d action forms or buttons; want a viewer with none", vrole, actions)
	}
	shoot(t, vctx, shots, "10-viewer-agent.png")
	csrf := js[string](t, vctx, `document.querySelector('input[name="csrf"]').value`)
	vck := sessionCookie(t, vctx)
	status, body := forgePost(t, d.base, "/console/act", vck.Value, url.Values{"csrf": {csrf}, "kind": {"freeze_agent"}, "target": {"agent-8"},
		"issuer": {"dev"}, "reason": {"a viewer tries"}})
	if status != http.StatusForbidden || !strings.Contains(body, "responder") {
		t.Errorf("a viewer's freeze answered %d:\n%s", status, body)
	}
	if s := adminTaskState(t, d.base, d.bystand); s != "active" {
		t.Errorf("agent-8's task is %s after the viewer's post; want active", s)
	}
}

// signIn signs in to the console in the browser as name in group, on the
// development issuer's sign-in form (authorization code + PKCE).
func signIn(t *testing.T, ctx context.Context, base, name, group string) {
	t.Helper()
	do(t, ctx, "signing in", chromedp.Navigate(base+"/console/"), chromedp.WaitVisible(id("signin")), chromedp.Click(id("signin")),
		chromedp.WaitVisible(css(`input[name="group"]`)), chromedp.SetValue(id("name"), name),
		chromedp.Click(css(`input[name="group"][value="`+group+`"]`)))
	shoot(t, ctx, screenshots(t), "00-sign-in-"+group+".png")
	do(t, ctx, "submitting the sign-in", chromedp.Click(id("signin")), chromedp.WaitVisible(id("who")))
}
