package main

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/valet-dev/valet/internal/devidp"
)

// consoleClient signs in to the console over plain HTTP, the way a browser
// would, using the development issuer's login_hint shortcut, and returns a
// client holding the session cookie.
func consoleClient(t *testing.T, base, name, group string) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if strings.HasSuffix(req.URL.Path, "/dev/authorize") {
			q := req.URL.Query()
			q.Set("login_hint", name)
			q.Set("dev_groups", group)
			req.URL.RawQuery = q.Encode()
		}
		return nil
	}}
	resp, err := c.Get(base + "/console/signin")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Signed in") {
		t.Fatalf("sign-in as %s answered %d:\n%s", name, resp.StatusCode, body)
	}
	return c
}

func get(t *testing.T, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// TestConsoleHTTP checks, without a browser, what the browser test checks
// of the console's defences: security headers, agent-written text escaped,
// forged posts and a viewer's post refused, no session without sign-in.
func TestConsoleHTTP(t *testing.T) {
	d := startConsoleDev(t)
	if resp, body := get(t, http.DefaultClient, d.base+"/console/"); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `id="signin"`) {
		t.Fatalf("the console without a session answered %d:\n%s", resp.StatusCode, body)
	}
	admin := consoleClient(t, d.base, "ops", devidp.AdminGroup)
	resp, body := get(t, admin, d.base+"/console/tasks/"+d.root)
	h := resp.Header
	if resp.StatusCode != http.StatusOK || !strings.Contains(h.Get("Content-Security-Policy"), "default-src 'self'") ||
		strings.Contains(h.Get("Content-Security-Policy"), "unsafe") || h.Get("X-Frame-Options") != "DENY" || h.Get("Cache-Control") != "no-store" {
		t.Errorf("task page: %d, headers %v", resp.StatusCode, h)
	}
	if strings.Contains(body, "<script>alert(1)") || !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("the intent's script is not escaped:\n%s", body)
	}
	if strings.Contains(body, "eyJ") {
		t.Errorf("the page holds something that looks like a JWT:\n%s", body)
	}
	m := csrfField.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token on the page:\n%s", body)
	}
	form := url.Values{"kind": {"freeze_agent"}, "target": {"agent-8"}, "issuer": {"dev"}, "reason": {"forged"}}
	for _, csrf := range []string{"", "wrong", m[1] + "x"} {
		f := url.Values{}
		for k, v := range form {
			f[k] = v
		}
		if csrf != "" {
			f.Set("csrf", csrf)
		}
		resp, err := admin.PostForm(d.base+"/console/preview", f)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("a post with csrf %q answered %d; want 403", csrf, resp.StatusCode)
		}
	}
	// The right token from another origin is refused too.
	f := url.Values{"csrf": {m[1]}}
	for k, v := range form {
		f[k] = v
	}
	req, _ := http.NewRequest(http.MethodPost, d.base+"/console/preview", strings.NewReader(f.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	if resp, err := admin.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a cross-origin post answered %v, %v; want 403", resp.StatusCode, err)
	}
	// With the token, the admin's dry run answers (and changes nothing).
	resp, err := admin.PostForm(d.base+"/console/preview", f)
	if err != nil {
		t.Fatal(err)
	}
	pv, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(pv), `id="pv-tasks">1<`) {
		t.Errorf("the admin's dry run answered %d:\n%s", resp.StatusCode, pv)
	}

	viewer := consoleClient(t, d.base, "watcher", devidp.ViewerGroup)
	_, vbody := get(t, viewer, d.base+"/console/")
	vm := csrfField.FindStringSubmatch(vbody)
	if vm == nil || strings.Contains(vbody, `action="/console/preview"`) || strings.Contains(vbody, `action="/console/act"`) {
		t.Fatalf("the viewer's overview has action forms (or no CSRF token):\n%s", vbody)
	}
	vf := url.Values{"csrf": {vm[1]}}
	for k, v := range form {
		vf[k] = v
	}
	resp, err = viewer.PostForm(d.base+"/console/act", vf)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a viewer's freeze answered %d; want 403", resp.StatusCode)
	}
	if s := adminTaskState(t, d.base, d.bystand); s != "active" {
		t.Errorf("agent-8's task is %s; want active", s)
	}
}
