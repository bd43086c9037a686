// Command proxyagent is the agent process of TestProxyAgentProcessVault: a
// program that knows only the address of `valet proxy` (its HTTP side and
// its PostgreSQL listener). It declares a task through the proxy, calls an
// HTTP upstream through it, opens a psql session with the task handle as
// the password and keeps it open, then obeys one-word commands on stdin
// (http, query, exit) and answers one line each on stdout. Every answer it
// receives, from the proxy and from psql, goes to its own log
// (agent.log), which the test scans for credentials with the rest of what
// the process holds.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	proxyURL := flag.String("proxy", "", "the proxy's HTTP address (http://host:port)")
	pgAddr := flag.String("pg", "", "the proxy's PostgreSQL listener (host:port)")
	dir := flag.String("dir", ".", "the folder the agent writes its log and results in")
	flag.Parse()
	logf, err := os.OpenFile(filepath.Join(*dir, "agent.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Println("err opening the log:", err)
		os.Exit(1)
	}
	a := &agent{proxy: strings.TrimSuffix(*proxyURL, "/"), pg: *pgAddr, dir: *dir, log: logf,
		client: &http.Client{Timeout: 10 * time.Second}}
	if err := a.run(); err != nil {
		a.logf("fatal: %v", err)
		fmt.Println("err", err)
		os.Exit(1)
	}
}

type agent struct {
	proxy, pg, dir string
	log            *os.File
	client         *http.Client

	taskID, handle string
	psql           *exec.Cmd
	psqlIn         io.WriteCloser
	psqlOut        chan string // psql's output lines; closed when psql exits
}

func (a *agent) logf(format string, args ...any) {
	fmt.Fprintf(a.log, time.Now().UTC().Format(time.RFC3339Nano)+" "+format+"\n", args...)
}

func (a *agent) run() error {
	if err := a.declare(); err != nil {
		return err
	}
	status, body, err := a.call()
	if err != nil || status != http.StatusOK {
		return fmt.Errorf("first upstream call: %d %v", status, err)
	}
	if err := a.startPsql(); err != nil {
		return err
	}
	rows, err := a.query()
	if err != nil {
		return fmt.Errorf("first query: %v", err)
	}
	result, _ := json.Marshal(map[string]any{"task": a.taskID, "upstream": string(body), "rows": rows})
	if err := os.WriteFile(filepath.Join(a.dir, "result.json"), result, 0o600); err != nil {
		return err
	}
	fmt.Printf("ready task=%s psql=%d rows=%s\n", a.taskID, a.psql.Process.Pid, strings.Join(rows, ";"))

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch cmd := strings.TrimSpace(in.Text()); cmd {
		case "http":
			status, body, err := a.call()
			if err != nil {
				fmt.Println("err", err)
				continue
			}
			var refusal struct{ Rule string }
			_ = json.Unmarshal(body, &refusal)
			fmt.Printf("status %d rule=%s\n", status, refusal.Rule)
		case "query":
			rows, err := a.query()
			if err != nil {
				fmt.Printf("closed %v\n", err)
				continue
			}
			fmt.Printf("rows %s\n", strings.Join(rows, ";"))
		case "exit":
			if a.psqlIn != nil {
				_ = a.psqlIn.Close()
			}
			fmt.Println("bye")
			return nil
		default:
			fmt.Println("err unknown command", cmd)
		}
	}
	return in.Err()
}

// declare declares the task through the proxy and keeps the handle.
func (a *agent) declare() error {
	body := `{"template":"secretless","intent":"count the open orders","tools":["orders.read","db.query"]}`
	resp, err := a.client.Post(a.proxy+"/v1/tasks", "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	b := a.record("POST /v1/tasks", resp)
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("declaring through the proxy: %s", resp.Status)
	}
	var d struct {
		Task struct {
			ID string `json:"id"`
		} `json:"task"`
		Handle string `json:"handle"`
	}
	if err := json.Unmarshal(b, &d); err != nil || d.Handle == "" {
		return fmt.Errorf("the proxy's answer: %v", err)
	}
	a.taskID, a.handle = d.Task.ID, d.Handle
	return nil
}

// call reads an order through the proxy's reverse mode.
func (a *agent) call() (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, a.proxy+"/u/orders/orders/4521", nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+a.handle)
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, a.record("GET /u/orders/orders/4521", resp), nil
}

// record logs a whole answer, headers and body, and returns the body.
func (a *agent) record(what string, resp *http.Response) []byte {
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var h bytes.Buffer
	_ = resp.Header.Write(&h)
	a.logf("%s -> %s (read error %v)\n%s\n%s", what, resp.Status, err, h.String(), b)
	return b
}

// startPsql opens a psql session to the proxy's listener with the handle
// as the password, and keeps it open.
func (a *agent) startPsql() error {
	host, port, err := net.SplitHostPort(a.pg)
	if err != nil {
		return err
	}
	a.psql = exec.Command("psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
		"-h", host, "-p", port, "-U", "agent", "-d", "postgres")
	a.psql.Env = []string{"PATH=" + os.Getenv("PATH"), "PGPASSWORD=" + a.handle, "PGCONNECT_TIMEOUT=5", "PGSSLMODE=disable"}
	a.psql.Dir = a.dir
	if a.psqlIn, err = a.psql.StdinPipe(); err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	a.psql.Stdout, a.psql.Stderr = w, w
	if err := a.psql.Start(); err != nil {
		return err
	}
	w.Close()
	a.psqlOut = make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			a.logf("psql: %s", sc.Text())
			a.psqlOut <- sc.Text()
		}
		err := a.psql.Wait()
		a.logf("psql exited: %v", err)
		close(a.psqlOut)
	}()
	return nil
}

// query runs a real query in the open psql session; an error means the
// session is gone (psql exits when its server connection is lost).
func (a *agent) query() ([]string, error) {
	const end = "__end_of_answer__"
	if _, err := io.WriteString(a.psqlIn, "SELECT current_user, count(*) FROM orders;\n\\echo "+end+"\n"); err != nil {
		return nil, fmt.Errorf("psql: %v", err)
	}
	var rows []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-a.psqlOut:
			if !ok {
				return nil, fmt.Errorf("psql exited (%s)", strings.Join(rows, " | "))
			}
			if line == end {
				return rows, nil
			}
			rows = append(rows, line)
		case <-timeout:
			return nil, fmt.Errorf("psql did not answer in 10s")
		}
	}
}
