package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/internal/printable"
	"github.com/valet-dev/valet/revocation"
)

// adminClient talks to the admin API for the responder commands.
type adminClient struct {
	server, token, output string
	stdout, stderr        io.Writer
	http                  *http.Client
}

// adminFlags adds --server, --token and -o to fs.
func adminFlags(fs *flag.FlagSet, getenv func(string) string) (server, token, output *string) {
	server = fs.String("server", envOr(getenv, "VALET_SERVER", "http://"+defaultAddr), "Valet's URL (env VALET_SERVER)")
	token = fs.String("token", getenv("VALET_ADMIN_TOKEN"), "admin token (env VALET_ADMIN_TOKEN)")
	output = fs.String("o", "table", "output: table or json")
	return
}

func newAdminClient(server, token, output string, stdout, stderr io.Writer) (*adminClient, error) {
	if token == "" {
		return nil, usageError("an admin token is required: --token or VALET_ADMIN_TOKEN")
	}
	if output != "table" && output != "json" {
		return nil, usageError("-o must be table or json")
	}
	return &adminClient{server: strings.TrimSuffix(server, "/"), token: token, output: output, stdout: stdout, stderr: stderr,
		http: &http.Client{Timeout: 30 * time.Second}}, nil
}

// call sends a request and decodes a 2xx JSON answer into out; other
// answers become errors carrying Valet's message.
func (c *adminClient) call(ctx context.Context, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("calling %s: %w", c.server, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error, Message, Rule string }
		_ = json.Unmarshal(raw, &e)
		if e.Message == "" {
			e.Message = strings.TrimSpace(string(raw))
		}
		return resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, printable.Escape(e.Message))
	}
	return resp.StatusCode, json.Unmarshal(raw, out)
}

// json writes v as indented JSON, terminal controls escaped (printable.JSON).
func (c *adminClient) json(v any) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := c.stdout.Write(printable.JSON(b.Bytes()))
	return err
}

// table writes rows under header, each cell escaped (printable.Escape):
// cells carry what agents and tool servers sent.
func (c *adminClient) table(header string, rows [][]string) {
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, v := range r {
			cells[i] = printable.Escape(v)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
}

type jobView struct {
	ID       string `json:"id"`
	State    string `json:"state"`
	Tasks    int    `json:"tasks_matched"`
	Matched  int    `json:"matched"`
	Revoked  int    `json:"revoked"`
	Failed   int    `json:"failed"`
	Pending  int    `json:"pending"`
	By       string `json:"by"`
	Reason   string `json:"reason"`
	Finished string `json:"finished_at"`
}

// cmdRevoke is `valet revoke --agent X [--issuer I] [--template T] [--tool T] [--task ID] [--since 2h] [--dry-run]`.
func cmdRevoke(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlags("revoke")
	server, token, output := adminFlags(fs, getenv)
	var sel struct {
		Agent        string `json:"agent,omitempty"`
		Issuer       string `json:"issuer,omitempty"`
		Template     string `json:"template,omitempty"`
		Tool         string `json:"tool,omitempty"`
		TaskID       string `json:"task_id,omitempty"`
		IssuedAfter  string `json:"issued_after,omitempty"`
		IssuedBefore string `json:"issued_before,omitempty"`
	}
	fs.StringVar(&sel.Agent, "agent", "", "the agent (subject)")
	fs.StringVar(&sel.Issuer, "issuer", "", "the agent's issuer (name)")
	fs.StringVar(&sel.Template, "template", "", "template name")
	fs.StringVar(&sel.Tool, "tool", "", "tool name")
	fs.StringVar(&sel.TaskID, "task", "", "task id")
	since := fs.Duration("since", 0, "only credentials issued in the last DURATION (e.g. 2h)")
	reason := fs.String("reason", "", "why (goes to the audit trail)")
	dry := fs.Bool("dry-run", false, "count and sample what would be revoked; change nothing")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	c, err := newAdminClient(*server, *token, *output, stdout, stderr)
	if err != nil {
		return err
	}
	if *since > 0 {
		sel.IssuedAfter = time.Now().Add(-*since).UTC().Format(time.RFC3339Nano)
	}
	body := map[string]any{"selector": sel, "reason": *reason, "dry_run": *dry}
	if *dry {
		var d struct {
			Tasks   int      `json:"tasks_matched"`
			Matched int      `json:"matched"`
			Sample  []string `json:"sample"`
		}
		if _, err := c.call(ctx, http.MethodPost, "/v1/admin/revocations", body, &d); err != nil {
			return err
		}
		if c.output == "json" {
			return c.json(d)
		}
		fmt.Fprintf(stdout, "dry run: %d credentials in %d tasks would be revoked\nsample tasks: %s\n", d.Matched, d.Tasks, printable.Escape(strings.Join(d.Sample, " ")))
		return nil
	}
	var ans struct {
		Job jobView `json:"job"`
	}
	if _, err := c.call(ctx, http.MethodPost, "/v1/admin/revocations", body, &ans); err != nil {
		return err
	}
	j, err := c.waitJob(ctx, ans.Job)
	if err != nil {
		return err
	}
	return c.printJob(j)
}

// waitJob polls a job until it is done, drawing a progress bar on stderr
// when stderr is a terminal.
func (c *adminClient) waitJob(ctx context.Context, j jobView) (jobView, error) {
	tty := isTerminal(c.stderr)
	for j.State != "done" {
		if tty {
			fmt.Fprintf(c.stderr, "\r%s %s %d revoked, %d tasks", printable.Escape(j.ID), bar(j.Revoked, j.Matched), j.Revoked, j.Tasks)
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
		var ans struct {
			Job jobView `json:"job"`
		}
		if _, err := c.call(ctx, http.MethodGet, "/v1/admin/revocations/"+url.PathEscape(j.ID), nil, &ans); err != nil {
			return j, err
		}
		j = ans.Job
	}
	if tty {
		fmt.Fprintf(c.stderr, "\r%s %s done%30s\n", printable.Escape(j.ID), bar(1, 1), "")
	}
	return j, nil
}

func bar(n, total int) string {
	const width = 30
	fill := width
	if total > 0 {
		fill = min(width, n*width/total)
	}
	return "[" + strings.Repeat("#", fill) + strings.Repeat(".", width-fill) + "]"
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func (c *adminClient) printJob(j jobView) error {
	if c.output == "json" {
		return c.json(j)
	}
	c.table("JOB\tSTATE\tTASKS\tMATCHED\tREVOKED\tFAILED\tPENDING\tBY", [][]string{{j.ID, j.State, fmt.Sprint(j.Tasks),
		fmt.Sprint(j.Matched), fmt.Sprint(j.Revoked), fmt.Sprint(j.Failed), fmt.Sprint(j.Pending), j.By}})
	return nil
}

var controlKinds = map[string]string{"agent": "freeze_agent", "template": "quarantine_template", "issuer": "distrust_issuer"}

// cmdFreeze is `valet freeze agent|template|issuer NAME [--issuer I] [--revoke] [--reason R]`
// (and, with lift, `valet unfreeze ...`).
func cmdFreeze(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, lift bool) error {
	name := "freeze"
	if lift {
		name = "unfreeze"
	}
	if len(args) < 2 || controlKinds[args[0]] == "" {
		return usageError("usage: valet " + name + " agent|template|issuer NAME [flags]")
	}
	kind, target := controlKinds[args[0]], args[1]
	fs := newFlags(name)
	server, token, output := adminFlags(fs, getenv)
	issuer := fs.String("issuer", "", "freeze the agent of this issuer only")
	revoke := fs.Bool("revoke", false, "also revoke the live tasks it covers")
	reason := fs.String("reason", "", "why (shown to refused agents and in the audit trail)")
	if err := parseFlags(fs, args[2:]); err != nil {
		return err
	}
	c, err := newAdminClient(*server, *token, *output, stdout, stderr)
	if err != nil {
		return err
	}
	if lift {
		q := url.Values{"kind": {kind}, "target": {target}}
		if *issuer != "" {
			q.Set("issuer", *issuer)
		}
		var ans map[string]any
		if _, err := c.call(ctx, http.MethodDelete, "/v1/admin/controls?"+q.Encode(), nil, &ans); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "lifted %s\n", printable.Escape(fmt.Sprint(ans["lifted"])))
		return nil
	}
	var ans struct {
		Control map[string]any `json:"control"`
		Job     *jobView       `json:"job"`
	}
	body := map[string]any{"kind": kind, "target": target, "issuer": *issuer, "reason": *reason, "revoke": *revoke}
	if _, err := c.call(ctx, http.MethodPost, "/v1/admin/controls", body, &ans); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %s: in force on every replica\n", kind, printable.Escape(target))
	if ans.Job != nil {
		j, err := c.waitJob(ctx, *ans.Job)
		if err != nil {
			return err
		}
		return c.printJob(j)
	}
	return nil
}

// cmdControls is `valet controls ls`.
func cmdControls(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 1 || args[0] != "ls" {
		return usageError("usage: valet controls ls")
	}
	fs := newFlags("controls ls")
	server, token, output := adminFlags(fs, getenv)
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	c, err := newAdminClient(*server, *token, *output, stdout, stderr)
	if err != nil {
		return err
	}
	var ans struct {
		Controls []struct{ Kind, Target, Issuer, Reason, By, At string } `json:"controls"`
	}
	if _, err := c.call(ctx, http.MethodGet, "/v1/admin/controls", nil, &ans); err != nil {
		return err
	}
	if c.output == "json" {
		return c.json(ans.Controls)
	}
	rows := [][]string{}
	for _, k := range ans.Controls {
		rows = append(rows, []string{k.Kind, k.Target, k.Issuer, k.By, k.At, k.Reason})
	}
	c.table("KIND\tTARGET\tISSUER\tBY\tAT\tREASON", rows)
	return nil
}

// cmdTasks is `valet tasks ls [--agent A] [--state S] [--template T]`,
// `valet tasks show ID` and `valet tasks timeline ID`.
func cmdTasks(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) < 1 {
		return usageError("usage: valet tasks ls|show ID|timeline ID|rollback ID [--dry-run] [--continue] [--yes]")
	}
	sub, rest := args[0], args[1:]
	if sub == "rollback" {
		return cmdRollback(ctx, rest, getenv, stdout, stderr) // rollback.go
	}
	id := ""
	if sub == "show" || sub == "timeline" {
		if len(rest) < 1 {
			return usageError("usage: valet tasks " + sub + " ID")
		}
		id, rest = rest[0], rest[1:]
	}
	fs := newFlags("tasks " + sub)
	server, token, output := adminFlags(fs, getenv)
	agent := fs.String("agent", "", "agent")
	issuer := fs.String("issuer", "", "issuer")
	state := fs.String("state", "", "active, completed, expired or revoked")
	template := fs.String("template", "", "template")
	limit := fs.Int("limit", 100, "at most this many")
	if err := parseFlags(fs, rest); err != nil {
		return err
	}
	c, err := newAdminClient(*server, *token, *output, stdout, stderr)
	if err != nil {
		return err
	}
	type task struct {
		ID, State, Agent, Issuer, Template, Intent string
		Deadline                                   string `json:"deadline"`
		EndReason                                  string `json:"end_reason"`
	}
	switch sub {
	case "ls":
		q := url.Values{"limit": {fmt.Sprint(*limit)}}
		for k, v := range map[string]string{"agent": *agent, "issuer": *issuer, "state": *state, "template": *template} {
			if v != "" {
				q.Set(k, v)
			}
		}
		var ans struct {
			Tasks []task `json:"tasks"`
		}
		if _, err := c.call(ctx, http.MethodGet, "/v1/admin/tasks?"+q.Encode(), nil, &ans); err != nil {
			return err
		}
		if c.output == "json" {
			return c.json(ans.Tasks)
		}
		rows := [][]string{}
		for _, t := range ans.Tasks {
			rows = append(rows, []string{t.ID, t.State, t.Issuer + "/" + t.Agent, t.Template, t.Deadline, t.EndReason})
		}
		c.table("TASK\tSTATE\tAGENT\tTEMPLATE\tDEADLINE\tEND REASON", rows)
	case "show":
		var ans struct {
			Task        task `json:"task"`
			Credentials []struct {
				ID, Kind  string
				ExpiresAt string `json:"expires_at"`
			} `json:"credentials"`
		}
		if _, err := c.call(ctx, http.MethodGet, "/v1/admin/tasks/"+url.PathEscape(id), nil, &ans); err != nil {
			return err
		}
		if c.output == "json" {
			return c.json(ans)
		}
		t := ans.Task
		e := printable.Escape
		fmt.Fprintf(stdout, "task      %s\nstate     %s %s\nagent     %s/%s\ntemplate  %s\nintent    %s\ndeadline  %s\n\n",
			e(t.ID), e(t.State), e(t.EndReason), e(t.Issuer), e(t.Agent), e(t.Template), e(t.Intent), e(t.Deadline))
		rows := [][]string{}
		for _, cr := range ans.Credentials {
			rows = append(rows, []string{cr.ID, cr.Kind, cr.ExpiresAt})
		}
		c.table("CREDENTIAL\tKIND\tEXPIRES", rows)
	case "timeline":
		var ans struct {
			Events []struct {
				Time, Type, Actor, Outcome, Rule, Reason string
				Creds                                    []string       `json:"credentials"`
				Detail                                   map[string]any `json:"detail"`
			} `json:"events"`
		}
		if _, err := c.call(ctx, http.MethodGet, "/v1/admin/tasks/"+url.PathEscape(id)+"/timeline", nil, &ans); err != nil {
			return err
		}
		if c.output == "json" {
			return c.json(ans.Events)
		}
		rows := [][]string{}
		for _, e := range ans.Events {
			if e.Type == "tool.called" && e.Reason == "" { // what the agent did
				e.Reason = fmt.Sprintf("%v %v", e.Detail["tool"], e.Detail["side_effect"])
			}
			rows = append(rows, []string{e.Time, e.Type, e.Actor, e.Outcome + e.Rule, e.Reason, strings.Join(e.Creds, ",")})
		}
		c.table("TIME\tEVENT\tACTOR\tOUTCOME\tREASON\tCREDENTIALS", rows)
	default:
		return usageError("usage: valet tasks ls|show ID|timeline ID|rollback ID [--dry-run] [--continue] [--yes]")
	}
	return nil
}

// cmdAudit is `valet audit verify FILE` and `valet audit verify --redis URL`.
func cmdAudit(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) < 1 || args[0] != "verify" {
		return usageError("usage: valet audit verify FILE | --redis URL [--prefix valet]")
	}
	fs := newFlags("audit verify")
	redisURL := fs.String("redis", "", "verify the audit stream in this Redis instead of a file")
	prefix := fs.String("prefix", "valet", "Redis key prefix")
	// Flags may come before or after the file.
	var files []string
	rest := args[1:]
	for len(rest) > 0 {
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		files, rest = append(files, fs.Arg(0)), fs.Args()[1:]
	}
	switch {
	case *redisURL != "" && len(files) == 0:
		rc, err := revocation.NewClient(*redisURL)
		if err != nil {
			return err
		}
		defer rc.Close()
		rep, err := audit.VerifyStream(ctx, rc, *prefix)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "ok: %d events in %d chains verify\n", rep.Events, len(rep.Chains))
		if rep.Duplicates > 0 {
			fmt.Fprintf(stdout, "note: %d entries repeat the entry before them byte for byte (retried appends), not edits\n", rep.Duplicates)
		}
		if len(rep.Trimmed) > 0 {
			fmt.Fprintf(stdout, "note: %d chains start after their first record: the stream was trimmed by retention; the audit file is the full copy\n", len(rep.Trimmed))
		}
		return nil
	case *redisURL == "" && len(files) == 1:
		f, err := os.Open(files[0])
		if err != nil {
			return err
		}
		defer f.Close()
		last, err := audit.Verify(f)
		if err != nil {
			return fmt.Errorf("%s: %w", files[0], err)
		}
		fmt.Fprintf(stdout, "ok: %d events verify; last hash %s\n", last.Seq, printable.Escape(last.Hash))
		return nil
	}
	return usageError("usage: valet audit verify FILE | --redis URL [--prefix valet]")
}
