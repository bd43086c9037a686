package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/internal/vaulttest"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/proxy"
	"github.com/valet-dev/valet/proxy/pgwire"
)

// secretlessTemplates: tasks get a task token for the orders upstream (an
// HTTP service on loopback) and, from Vault, a token and a dynamic
// PostgreSQL role, which the proxy's PostgreSQL listener logs in with.
const secretlessTemplates = `
templates:
  - name: secretless
    principals:
      - issuer: test
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 5m, max: 15m}
    tools: [orders.read, db.query]
    audiences: [valet-proxy]
    vault:
      token_role: valet-task
      policies: [valet-db]
      database_role: readonly
    upstreams:
      - name: orders
        url: http://ORDERS/api
        allow_private: true
        credential: {from: task_token, as: header}
        routes:
          - {methods: [GET], path: "/orders/*", tool: orders.read}
      - {name: appdb, postgres: {tool: db.query}}
`

// recordingTransport keeps Valet's answers to the proxy's declarations:
// the credentials the proxy holds, which the canary scan looks for.
type recordingTransport struct {
	mu       sync.Mutex
	declared [][]byte
}

func (rt *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil || req.Method != http.MethodPost || req.URL.Path != "/v1/tasks" {
		return resp, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	rt.mu.Lock()
	rt.declared = append(rt.declared, b)
	rt.mu.Unlock()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, nil
}

// TestProxyAgentProcessVault is secretless mode end to end with a separate
// agent process (testdata/proxyagent): Valet with a real Vault issuing a
// dynamic PostgreSQL role (scram-sha-256) on the private PostgreSQL, a real
// HTTP upstream that checks the task token it gets, and `valet proxy` with
// its HTTP side and its PostgreSQL listener, wired as cmd/valet/proxy.go
// wires them. The agent knows only the proxy's two addresses: it declares
// through the proxy, calls the upstream, runs a real query in psql with
// the handle as PGPASSWORD and keeps the session open. The canary scan
// then reads the agent's and psql's /proc/PID/environ and memory, the
// agent's log (every answer it got) and every file it wrote, and finds
// none of the credentials the proxy holds (task token, Vault token,
// database password, the proxy's identity token and client secret) nor a
// recognisable token prefix. The task is completed at Valet; the open psql
// session is closed, the next request is refused, and Vault's role is gone.
func TestProxyAgentProcessVault(t *testing.T) {
	skipWithoutVault(t)
	psql, err := exec.LookPath("psql")
	if err != nil {
		t.Skip("needs psql (Debian package postgresql-client)")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("needs the go tool to build the agent program")
	}
	work := t.TempDir()
	agentBin := filepath.Join(work, "proxyagent")
	build := exec.Command(goBin, "build", "-o", agentBin, "./testdata/proxyagent")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the agent: %v\n%s", err, out)
	}

	// The upstream accepts only the task token of a task of this run.
	var upMu sync.Mutex
	var upTokens []string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		parts := strings.Split(tok, ".")
		if !ok || len(parts) != 3 {
			http.Error(w, `{"error":"no bearer token"}`, http.StatusUnauthorized)
			return
		}
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		if err != nil || !strings.Contains(string(payload), `"task_id":"`) {
			http.Error(w, `{"error":"not a task token"}`, http.StatusUnauthorized)
			return
		}
		upMu.Lock()
		upTokens = append(upTokens, tok)
		upMu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = fmt.Fprintf(w, `{"order":4521,"status":"open","path":%q}`, r.URL.Path)
	}))
	t.Cleanup(up.Close)
	tmpl := strings.ReplaceAll(secretlessTemplates, "ORDERS", strings.TrimPrefix(up.URL, "http://"))

	w := newVaultWorld(t)
	w.withOrders()
	e := w.broker(func(o *envOptions) { o.templates, o.incident = tmpl, true })

	// `valet proxy --postgres`; its client to Valet records the
	// declarations' answers.
	rec := &recordingTransport{}
	var idMu sync.Mutex
	var idTokens []string
	sp := startSecretlessProxy(t, w, e, tmpl, func(c *proxy.Config) {
		c.HTTPClient = &http.Client{Timeout: 10 * time.Second, Transport: rec}
		c.Identity = func(context.Context) (string, error) {
			tok := e.identity("agent-secretless")
			idMu.Lock()
			idTokens = append(idTokens, tok)
			idMu.Unlock()
			return tok, nil
		}
	})
	proxyURL, proxyLog, trail, sessionEnded := sp.url, sp.logs, sp.trail, sp.ended

	// The agent: a process of its own, with an environment of PATH and
	// HOME only, and the proxy's two addresses as arguments.
	agentDir := filepath.Join(work, "agent")
	if err := os.Mkdir(agentDir, 0o700); err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(filepath.Join(agentDir, "agent.stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd := exec.Command(agentBin, "-proxy", proxyURL, "-pg", sp.pgAddr, "-dir", agentDir)
	cmd.Env = []string{"PATH=" + filepath.Dir(psql) + ":/usr/bin:/bin", "HOME=" + agentDir}
	cmd.Dir, cmd.Stderr = agentDir, stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	ask := func(command string) string {
		t.Helper()
		if command != "" {
			if _, err := io.WriteString(stdin, command+"\n"); err != nil {
				t.Fatalf("telling the agent %q: %v", command, err)
			}
		}
		select {
		case l, ok := <-lines:
			if !ok {
				b, _ := os.ReadFile(filepath.Join(agentDir, "agent.log"))
				t.Fatalf("the agent exited; its log:\n%s", b)
			}
			return l
		case <-time.After(30 * time.Second):
			t.Fatalf("the agent did not answer %q in 30s", command)
		}
		return ""
	}

	ready := ask("")
	var taskID string
	var psqlPID int
	if _, err := fmt.Sscanf(ready, "ready task=%s psql=%d", &taskID, &psqlPID); err != nil {
		b, _ := os.ReadFile(filepath.Join(agentDir, "agent.log"))
		t.Fatalf("the agent said %q (%v); its log:\n%s", ready, err, b)
	}

	// What the proxy holds, from Valet's answer to it.
	rec.mu.Lock()
	declared := slices.Clone(rec.declared)
	rec.mu.Unlock()
	if len(declared) != 1 {
		t.Fatalf("the proxy declared %d tasks, want 1", len(declared))
	}
	d := parseDeclared(t, declared[0])
	if d.id != taskID {
		t.Fatalf("the agent's task %s, Valet's %s", taskID, d.id)
	}
	upMu.Lock()
	got := slices.Clone(upTokens)
	upMu.Unlock()
	if len(got) != 1 || got[0] != d.taskToken {
		t.Fatalf("the upstream got %d token(s), want the task's token once", len(got))
	}
	if want := "rows=" + d.username + "|1000"; !strings.HasSuffix(ready, want) {
		t.Fatalf("the agent's query answered %q, want %q (the Vault role, all orders)", ready, want)
	}
	if ok, err := w.pg.RoleExists(context.Background(), d.username); !ok || err != nil {
		t.Fatalf("Vault's role %s is not in PostgreSQL: %v", d.username, err)
	}

	idMu.Lock()
	idToken := idTokens[0]
	idMu.Unlock()
	canaries := map[string]string{
		"task token": d.taskToken, "task token signature": strings.Split(d.taskToken, ".")[2],
		"task token claims": strings.Split(d.taskToken, ".")[1],
		"Vault token":       d.vaultTok, "Vault token body": strings.TrimPrefix(d.vaultTok, "hvs."),
		"database password": d.password, "proxy identity token": idToken, "proxy client secret": clientSecret,
		"Valet's own Vault token": w.token,
	}
	for name, s := range map[string]string{"Vault token": strings.TrimPrefix(d.vaultTok, "hvs."), "database password": d.password} {
		if len(s) < 16 {
			t.Fatalf("%s is only %d characters", name, len(s))
		}
		canaries[name+", first 12"], canaries[name+", last 12"] = s[:12], s[len(s)-12:]
	}
	scan := newCanaryScan(canaries)

	scanned := scan.process(t, "agent", cmd.Process.Pid, agentDir)
	scanned += scan.process(t, "psql", psqlPID, "")
	for what, text := range map[string]string{"the proxy's log": proxyLog.String(), "the proxy's audit": trail.String()} {
		scan.text(what, []byte(text))
	}
	scan.fail(t)
	t.Logf("canary scan while the session is open: %d canaries and %d patterns, no hit in %d bytes (environ, log, files, memory of the agent and psql)",
		len(canaries), len(scan.patterns)+len(scan.textPatterns), scanned)

	// Complete at Valet with the task token (as the task's owner would):
	// the proxy learns it from the revocation feed.
	start := time.Now()
	if r := e.do(http.MethodPost, "/v1/tasks/"+d.id+"/complete", d.taskToken, "", nil, false); r.Status != http.StatusOK {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	answered := time.Since(start)
	select {
	case end := <-sessionEnded:
		ev := end.ev
		// Valet revokes the lease before it answers, and the role's
		// revocation statements end its sessions: the server side may
		// close first (server_closed); else the proxy does (task_ended).
		if (ev.EndReason != pgwire.EndTask && ev.EndReason != pgwire.EndServer) || ev.TaskID != d.id {
			t.Fatalf("the psql session ended with %q for task %s, want %q or %q", ev.EndReason, ev.TaskID, pgwire.EndTask, pgwire.EndServer)
		}
		t.Logf("the open psql session was closed (%s) %s after the completion was sent (its answer came after %s)",
			ev.EndReason, end.at.Sub(start).Round(100*time.Microsecond), answered.Round(100*time.Microsecond))
	case <-time.After(5 * time.Second):
		t.Fatal("the open psql session is still open 5s after the task completed")
	}
	if got := ask("query"); !strings.HasPrefix(got, "closed ") {
		t.Fatalf("a query in the open psql session after the task ended: %q", got)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		got := ask("http")
		if got == "status 403 rule=task_ended" {
			break
		}
		if got != "status 200 rule=" || time.Now().After(deadline) {
			t.Fatalf("the agent's call after the task ended: %q", got)
		}
		time.Sleep(5 * time.Millisecond) // bounded polling of the feed
	}
	t.Logf("the agent's next call was refused (task_ended) %s after the completion's answer", (time.Since(start) - answered).Round(100*time.Microsecond))
	w.mustBeGone(d)

	// The database session is in the task's timeline, reported by the
	// proxy: opened and closed, never a password.
	var timeline []string
	for start := time.Now(); ; {
		evs, err := e.events.AdminTaskEvents(context.Background(), taskID)
		if err != nil {
			t.Fatal(err)
		}
		timeline = timeline[:0]
		for _, ev := range evs {
			if ev.Tool == "db.query" {
				timeline = append(timeline, ev.SideEffect)
			}
		}
		if len(timeline) >= 2 || time.Since(start) > 10*time.Second {
			break
		}
		time.Sleep(10 * time.Millisecond) // bounded polling of the proxy's report queue
	}
	if len(timeline) != 2 || !strings.Contains(strings.Join(timeline, "\n"), "postgres session closed") {
		t.Fatalf("the database session in the timeline: %q", timeline)
	}
	scan.text("the task's timeline", []byte(strings.Join(timeline, "\n")))
	t.Logf("timeline: %q", timeline)

	// Everything the agent got after the end is scanned too, then it exits.
	scanned = scan.process(t, "agent", cmd.Process.Pid, agentDir)
	scan.text("the proxy's log", []byte(proxyLog.String()))
	scan.fail(t)
	t.Logf("canary scan after the end: no hit in %d bytes", scanned)
	if got := ask("exit"); got != "bye" {
		t.Fatalf("the agent's goodbye: %q", got)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the agent: %v", err)
	}
}

// secretlessProxy is `valet proxy --postgres` in front of a broker on a
// vaultWorld: its HTTP side (the embedded proxyEnv, whose agent names the
// proxy's workload identity) and its PostgreSQL listener, whose ended
// sessions arrive on ended.
type secretlessProxy struct {
	*proxyEnv
	pgAddr string
	ended  chan sessionEnd
}

// sessionEnd is one session the listener ended, and when.
type sessionEnd struct {
	ev pgwire.Event
	at time.Time
}

// startSecretlessProxy starts the proxy as cmd/valet/proxy.go assembles
// it, with tmpl's templates, the shipped watch interval, and the
// PostgreSQL listener in front of w's PostgreSQL; adjust changes the
// configuration before the proxy is built. It returns once the proxy
// follows Valet's feed. Whoever opens sessions reads their ends from
// ended (OnEnd blocks when it is full).
func startSecretlessProxy(t *testing.T, w *vaultWorld, e *env, tmpl string, adjust func(*proxy.Config)) *secretlessProxy {
	t.Helper()
	set, err := policy.Load([]policy.File{{Name: "secretless.yaml", Data: []byte(tmpl)}}, e.issuerNames)
	if err != nil {
		t.Fatal(err)
	}
	sp := &secretlessProxy{proxyEnv: &proxyEnv{env: e, logs: &syncBuffer{}, trail: &syncBuffer{}}, ended: make(chan sessionEnd, 16)}
	sp.agent.Store("agent-secretless")
	logger := slog.New(slog.NewJSONHandler(sp.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := proxy.Config{
		Valet: e.srv.URL, ClientID: clientID, ClientSecret: clientSecret, Audience: "valet-proxy", Templates: set,
		Identity: func(context.Context) (string, error) { return e.identity(sp.agent.Load().(string)), nil },
		Auditor:  audit.NewLog(sp.trail), Now: w.clock.Now, Logger: logger,
	}
	if adjust != nil {
		adjust(&cfg)
	}
	if sp.p, err = proxy.New(cfg); err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pgLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sp.url, sp.pgAddr = "http://"+httpLn.Addr().String(), pgLn.Addr().String()
	db := &pgwire.Server{Resolver: sp.p.Database(w.pg.Addr(), nil), Logger: logger,
		OnEnd: func(ev pgwire.Event) { sp.ended <- sessionEnd{ev, time.Now()} }}
	go func() { _ = db.Serve(pgLn) }()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- sp.p.Serve(ctx, httpLn) }()
	t.Cleanup(func() {
		_ = db.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("proxy: %v", err)
		}
	})
	waitFeedLive(t, sp.url)
	return sp
}

// skipWithoutVault skips a test when there is no vault binary to run.
func skipWithoutVault(t *testing.T) {
	t.Helper()
	if os.Getenv(vaulttest.BinEnv) == "" {
		root, _ := vaulttest.RepoRoot()
		if _, err := os.Stat(filepath.Join(root, ".bin", "vault")); err != nil {
			t.Skipf("needs a vault binary: set %s (scripts/vault-build builds one)", vaulttest.BinEnv)
		}
	}
}

// waitFeedLive waits (bounded) until the proxy follows Valet's feed.
func waitFeedLive(t *testing.T, proxyURL string) {
	t.Helper()
	for start := time.Now(); ; {
		resp, err := http.Get(proxyURL + "/healthz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), `"feed_live":true`) {
				return
			}
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("the proxy's feed is not live: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // bounded polling of real background work
	}
}

// parseDeclared reads the credentials out of Valet's answer to a
// declaration of the secretless template.
func parseDeclared(t *testing.T, raw []byte) dbTask {
	t.Helper()
	var body struct {
		Task struct {
			ID string `json:"id"`
		} `json:"task"`
		Credentials []map[string]any `json:"credentials"`
	}
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("Valet's answer to the proxy: %v", err)
	}
	d := dbTask{id: body.Task.ID}
	str := func(c map[string]any, k string) string { s, _ := c[k].(string); return s }
	for _, c := range body.Credentials {
		switch c["kind"] {
		case "jwt":
			d.taskToken = str(c, "access_token")
		case "vault_token":
			d.accessor, d.vaultTok = str(c, "accessor"), str(c, "token")
		case "vault_lease":
			d.leaseID, d.username, d.password = str(c, "lease_id"), str(c, "username"), str(c, "password")
		}
	}
	if d.id == "" || d.taskToken == "" || d.vaultTok == "" || d.password == "" || d.username == "" {
		t.Fatalf("Valet's answer to the proxy lacks a credential (kinds: %d)", len(body.Credentials))
	}
	return d
}

// canaryScan looks for credentials in what an agent holds: each canary
// verbatim, and the shapes of a Valet or other JWT and of a Vault token.
type canaryScan struct {
	canaries map[string][]byte
	patterns map[string]*regexp.Regexp
	// textPatterns are checked in text (environment, files) only: bare
	// prefixes that a megabyte of memory could hold by chance.
	textPatterns map[string]*regexp.Regexp
	hits         []string
}

func newCanaryScan(canaries map[string]string) *canaryScan {
	s := &canaryScan{canaries: map[string][]byte{}, patterns: map[string]*regexp.Regexp{
		"a JWT header (eyJhbGci, eyJ0eXAi)": regexp.MustCompile(`eyJhbGci|eyJ0eXAi`),
		"a JWT":                             regexp.MustCompile(`eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}`),
		"a Vault service token (hvs.)":      regexp.MustCompile(`hvs\.[A-Za-z0-9_-]{20,}`),
		"a Vault batch token (hvb.)":        regexp.MustCompile(`hvb\.[A-Za-z0-9_-]{20,}`),
	}, textPatterns: map[string]*regexp.Regexp{
		"a Vault token prefix (hvs., hvb., hvr.)": regexp.MustCompile(`hv[sbr]\.`),
	}}
	for name, v := range canaries {
		s.canaries[name] = []byte(v)
	}
	return s
}

// text scans one piece of text the agent holds; what names it in a hit
// (never the canary's value).
func (s *canaryScan) text(what string, b []byte) {
	s.memory(what, b)
	for name, re := range s.textPatterns {
		if loc := re.FindIndex(b); loc != nil {
			s.hits = append(s.hits, fmt.Sprintf("%s holds %s (at byte %d)", what, name, loc[0]))
		}
	}
}

// memory scans a piece of memory: the canaries and the token shapes.
func (s *canaryScan) memory(what string, b []byte) {
	for name, c := range s.canaries {
		if i := bytes.Index(b, c); i >= 0 {
			s.hits = append(s.hits, fmt.Sprintf("%s holds the %s (at byte %d)", what, name, i))
		}
	}
	for name, re := range s.patterns {
		if loc := re.FindIndex(b); loc != nil {
			s.hits = append(s.hits, fmt.Sprintf("%s holds %s (at byte %d)", what, name, loc[0]))
		}
	}
}

func (s *canaryScan) fail(t *testing.T) {
	t.Helper()
	if len(s.hits) > 0 {
		t.Fatalf("credentials leaked to the agent:\n%s", strings.Join(s.hits, "\n"))
	}
}

// process scans a live process: its environment, every file in dir (the
// agent's log holds every answer it got) and its memory. It returns the
// bytes scanned.
func (s *canaryScan) process(t *testing.T, name string, pid int, dir string) int {
	t.Helper()
	environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatalf("reading the %s's environment: %v", name, err)
	}
	s.text(name+"'s environment", environ)
	n := len(environ)
	if dir != "" {
		files := 0
		err := filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			files++
			n += len(b)
			s.text(name+"'s file "+de.Name(), b)
			return nil
		})
		if err != nil || files < 2 { // agent.log, result.json at least
			t.Fatalf("reading the %s's files: %d files, %v", name, files, err)
		}
	}
	memBytes, err := readMemory(pid, func(region []byte) { s.memory(name+"'s memory", region) })
	if err != nil {
		t.Fatalf("reading the %s's memory: %v", name, err)
	}
	return n + memBytes
}

// readMemory passes each readable mapping of a live process, read from
// /proc/PID/mem, to scan (the test runs as root or as the agent's parent,
// so ptrace's access check passes), and returns the bytes read.
func readMemory(pid int, scan func([]byte)) (int, error) {
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, err
	}
	defer mem.Close()
	total := 0
	for _, line := range strings.Split(strings.TrimSpace(string(maps)), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[1][0] != 'r' || (len(f) >= 6 && strings.HasPrefix(f[5], "[v") && f[5] != "[vdso]") {
			continue // [vvar] and [vsyscall] cannot be read this way
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if !ok || err1 != nil || err2 != nil || end <= start {
			return 0, fmt.Errorf("a line of maps: %q", line)
		}
		if end-start > 1<<30 {
			return 0, fmt.Errorf("a readable mapping of %d bytes", end-start)
		}
		buf := make([]byte, end-start)
		k, _ := mem.ReadAt(buf, int64(start)) // a device or guard page may not read: scan what did
		if k > 0 {
			scan(buf[:k])
			total += k
		}
	}
	if total == 0 {
		return 0, fmt.Errorf("no readable memory")
	}
	return total, nil
}
