package main

import (
	"bytes"
	"context"
	"encoding/json"
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

// adminFlagSet is what every admin command shares: the --server, --token
// and -o flags, and parse, which checks them into the client.
type adminFlagSet struct {
	fs                    *flags
	e                     env
	server, token, output *string
}

// adminFlags adds --server, --token and -o to fs. Add the command's own
// flags, then call parse.
func adminFlags(fs *flags, e env) *adminFlagSet {
	a := &adminFlagSet{fs: fs, e: e}
	a.server, a.output = serverFlags(fs, e)
	a.token = fs.String("token", e.getenv("VALET_ADMIN_TOKEN"), "admin `token` (env VALET_ADMIN_TOKEN; `valet dev token --admin NAME` in development)")
	return a
}

// serverFlags adds the flags of every command that calls a running Valet:
// --server, and -o (check it with checkOutput).
func serverFlags(fs *flags, e env) (server, output *string) {
	server = fs.String("server", envOr(e.getenv, "VALET_SERVER", "http://"+defaultAddr), "Valet's `URL` (env VALET_SERVER)")
	output = fs.String("o", "table", "output `format`: table, or json (the API's answer as it is)")
	return server, output
}

// checkOutput is the one check of -o.
func checkOutput(o string) error {
	if o != "table" && o != "json" {
		return usageError("-o must be table or json")
	}
	return nil
}

// parse parses the command line, which must hold exactly n positional
// arguments, and returns the admin client and those arguments.
func (a *adminFlagSet) parse(args []string, n int) (*adminClient, []string, error) {
	pos, err := a.fs.parseN(args, n)
	if err != nil {
		return nil, nil, err
	}
	if *a.token == "" {
		return nil, nil, usageError("an admin token is required: --token or VALET_ADMIN_TOKEN")
	}
	if err := checkOutput(*a.output); err != nil {
		return nil, nil, err
	}
	return &adminClient{server: strings.TrimSuffix(*a.server, "/"), token: *a.token, output: *a.output,
		stdout: a.e.stdout, stderr: a.e.stderr, http: &http.Client{Timeout: 30 * time.Second}}, pos, nil
}

// call sends a request, decodes a 2xx JSON answer into out and returns it
// raw; other answers become errors carrying Valet's message.
func (c *adminClient) call(ctx context.Context, method, path string, body, out any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.server+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling %s: %w", c.server, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, fmt.Errorf("%s %s: Valet did not accept the admin token: it may have expired, or come from an issuer that is not under admin.issuers (--token or VALET_ADMIN_TOKEN; with valet dev: valet dev token --admin NAME)", method, path)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error, Message, Rule string }
		_ = json.Unmarshal(raw, &e)
		if e.Message == "" {
			e.Message = strings.TrimSpace(string(raw))
		}
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, printable.Escape(e.Message))
	}
	return raw, json.Unmarshal(raw, out)
}

// show is call for a command whose -o json output is Valet's answer: with
// -o json it prints the answer and printed is true, and the caller prints
// nothing more; with -o table out is filled for the caller to print.
func (c *adminClient) show(ctx context.Context, method, path string, body, out any) (printed bool, err error) {
	raw, err := c.call(ctx, method, path, body, out)
	if err != nil || c.output != "json" {
		return false, err
	}
	return true, c.json(raw)
}

// json writes an answer of the API as it came (the shapes of openapi.yaml),
// indented, terminal controls escaped (printable.JSON).
func (c *adminClient) json(raw []byte) error {
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return err
	}
	b.WriteByte('\n')
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
func cmdRevoke(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("revoke [--agent A] [--issuer I] [--template T] [--tool T] [--task ID] [--label k=v] [--since 2h] [--dry-run]",
		"Revoke every live credential the selector matches (bulk revocation, responder role), following the job\nuntil it is done. The selectors combine (all must match); --dry-run counts and samples instead.")
	admin := adminFlags(fs, e)
	var sel struct {
		Agent        string `json:"agent,omitempty"`
		Issuer       string `json:"issuer,omitempty"`
		Template     string `json:"template,omitempty"`
		Tool         string `json:"tool,omitempty"`
		TaskID       string `json:"task_id,omitempty"`
		IssuedAfter  string `json:"issued_after,omitempty"`
		IssuedBefore string `json:"issued_before,omitempty"`
		Label        string `json:"label,omitempty"`
	}
	fs.StringVar(&sel.Agent, "agent", "", "the agent (subject) `name`")
	fs.StringVar(&sel.Label, "label", "", "the agents of the inventory with this owner label (`key=value`)")
	fs.StringVar(&sel.Issuer, "issuer", "", "the agent's issuer (`name` in the config)")
	fs.StringVar(&sel.Template, "template", "", "template `name`")
	fs.StringVar(&sel.Tool, "tool", "", "tool `name`")
	fs.StringVar(&sel.TaskID, "task", "", "task `id`")
	since := fs.Duration("since", 0, "only credentials issued in the last `duration` (e.g. 2h)")
	reason := fs.String("reason", "", "why (goes to the audit trail)")
	dry := fs.Bool("dry-run", false, "count and sample what would be revoked; change nothing")
	c, _, err := admin.parse(args, 0)
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
		if printed, err := c.show(ctx, http.MethodPost, "/v1/admin/revocations", body, &d); printed || err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "dry run: %d credentials in %d tasks would be revoked\nsample tasks: %s\n", d.Matched, d.Tasks, printable.Escape(strings.Join(d.Sample, " ")))
		return nil
	}
	var ans struct {
		Job jobView `json:"job"`
	}
	raw, err := c.call(ctx, http.MethodPost, "/v1/admin/revocations", body, &ans)
	if err != nil {
		return err
	}
	j, raw, err := c.waitJob(ctx, ans.Job, raw)
	if err != nil {
		return err
	}
	return c.printJob(j, raw)
}

// waitJob polls a job until it is done, drawing a progress bar on stderr
// when stderr is a terminal. raw is Valet's answer carrying j, or nil when
// the answer at hand carries more than the job (freeze --revoke): then
// the job is asked for once. It returns the job and Valet's last answer
// about it, which -o json prints.
func (c *adminClient) waitJob(ctx context.Context, j jobView, raw []byte) (jobView, []byte, error) {
	poll := func() error {
		var ans struct {
			Job jobView `json:"job"`
		}
		var err error
		if raw, err = c.call(ctx, http.MethodGet, "/v1/admin/revocations/"+url.PathEscape(j.ID), nil, &ans); err != nil {
			return err
		}
		j = ans.Job
		return nil
	}
	if raw == nil {
		if err := poll(); err != nil {
			return j, raw, err
		}
	}
	tty := isTerminal(c.stderr)
	for j.State != "done" {
		if tty {
			fmt.Fprintf(c.stderr, "\r%s %s %d revoked, %d tasks", printable.Escape(j.ID), bar(j.Revoked, j.Matched), j.Revoked, j.Tasks)
		}
		select {
		case <-ctx.Done():
			return j, raw, ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
		if err := poll(); err != nil {
			return j, raw, err
		}
	}
	if tty {
		fmt.Fprintf(c.stderr, "\r%s %s done%30s\n", printable.Escape(j.ID), bar(1, 1), "")
	}
	return j, raw, nil
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

func (c *adminClient) printJob(j jobView, raw []byte) error {
	if c.output == "json" {
		return c.json(raw)
	}
	c.table("JOB\tSTATE\tTASKS\tMATCHED\tREVOKED\tFAILED\tPENDING\tBY", [][]string{{j.ID, j.State, fmt.Sprint(j.Tasks),
		fmt.Sprint(j.Matched), fmt.Sprint(j.Revoked), fmt.Sprint(j.Failed), fmt.Sprint(j.Pending), j.By}})
	return nil
}

var controlKinds = map[string]string{"agent": "freeze_agent", "template": "quarantine_template", "issuer": "distrust_issuer"}

// cmdFreeze is `valet freeze agent|template|issuer NAME [--issuer I] [--revoke] [--reason R]`
// (and, with lift, `valet unfreeze ...`).
func cmdFreeze(ctx context.Context, e env, args []string, lift bool) error {
	name, about := "freeze", "Freeze an agent, quarantine a template or distrust an issuer on every replica (responder role).\n"+
		"Valet refuses a name it does not know (no template of that name; no configured issuer; an agent never seen)\n"+
		"unless --force. Freezing again keeps the earlier reason unless --reason gives a new one."
	if lift {
		name, about = "unfreeze", "Lift a freeze, quarantine or distrust (responder role)."
	}
	synopsis := name + " agent|template|issuer NAME [flags]"
	if !lift {
		synopsis += " | freeze --label key=value [--dry-run] [flags]"
		about += "\nWith --label, every agent of the inventory with that owner label is frozen (each under its issuer);\n" +
			"--dry-run says how many agents, live tasks and credentials that would hit, changing nothing."
	}
	fs := e.newFlags(synopsis, about)
	admin := adminFlags(fs, e)
	issuer := fs.String("issuer", "", "with agent: the agent of this issuer `name` only")
	var revoke, force, dry *bool
	var reason, label *string
	if !lift {
		revoke = fs.Bool("revoke", false, "also revoke the live tasks it covers")
		reason = fs.String("reason", "", "why (shown to refused agents and in the audit trail)")
		force = fs.Bool("force", false, "set the control even though Valet knows no such name (to block it before it appears)")
		label = fs.String("label", "", "freeze every agent of the inventory with this owner label (`key=value`)")
		dry = fs.Bool("dry-run", false, "with --label: count what the freeze would hit; change nothing")
	}
	n := 2
	if !lift && hasFlag(args, "label") {
		n = 0
	}
	c, pos, err := admin.parse(args, n)
	if err != nil {
		return err
	}
	if n == 0 {
		if *label == "" {
			return usageError("--label needs key=value")
		}
		return freezeLabel(ctx, c, *label, *reason, *revoke, *dry)
	}
	if !lift && *dry {
		return usageError("--dry-run previews a freeze by --label")
	}
	kind, target := controlKinds[pos[0]], pos[1]
	if kind == "" {
		return usageError("usage: valet " + name + " agent|template|issuer NAME [flags] (see --help)")
	}
	if lift {
		q := url.Values{"kind": {kind}, "target": {target}}
		if *issuer != "" {
			q.Set("issuer", *issuer)
		}
		var ans map[string]any
		if printed, err := c.show(ctx, http.MethodDelete, "/v1/admin/controls?"+q.Encode(), nil, &ans); printed || err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "lifted %s\n", printable.Escape(fmt.Sprint(ans["lifted"])))
		return nil
	}
	var ans struct {
		Control struct{ Reason string } `json:"control"`
		Job     *jobView                `json:"job"`
	}
	body := map[string]any{"kind": kind, "target": target, "issuer": *issuer, "reason": *reason, "revoke": *revoke, "force": *force}
	raw, err := c.call(ctx, http.MethodPost, "/v1/admin/controls", body, &ans)
	if err != nil {
		return err
	}
	if ans.Job == nil && c.output == "json" {
		return c.json(raw)
	}
	if c.output != "json" {
		fmt.Fprintf(e.stdout, "%s %s: in force on every replica (reason: %s)\n", kind, printable.Escape(target), printable.Escape(or(ans.Control.Reason, "none given")))
	}
	if ans.Job != nil {
		j, raw, err := c.waitJob(ctx, *ans.Job, nil)
		if err != nil {
			return err
		}
		return c.printJob(j, raw)
	}
	return nil
}

// cmdControlsLs is `valet controls ls`.
func cmdControlsLs(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("controls ls [-o json]", "List the freezes, quarantines and distrusts in force (viewer role), all of them, sorted by kind, then issuer, then target.")
	c, _, err := adminFlags(fs, e).parse(args, 0)
	if err != nil {
		return err
	}
	var ans struct {
		Controls []struct{ Kind, Target, Issuer, Reason, By, At string } `json:"controls"`
	}
	if printed, err := c.show(ctx, http.MethodGet, "/v1/admin/controls", nil, &ans); printed || err != nil {
		return err
	}
	rows := [][]string{}
	for _, k := range ans.Controls {
		rows = append(rows, []string{k.Kind, k.Target, k.Issuer, k.By, k.At, k.Reason})
	}
	c.table("KIND\tTARGET\tISSUER\tBY\tAT\tREASON", rows)
	return nil
}

// cmdTasksLs is `valet tasks ls`: one page of tasks, newest first.
func cmdTasksLs(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("tasks ls [--agent A] [--issuer I] [--state S] [--template T] [--limit N] [--cursor C]",
		"List tasks (viewer role), newest first: by created_at, then id, both descending. One page of --limit\n"+
			"tasks; when more match, the command says so and how to get the next page (--cursor).")
	admin := adminFlags(fs, e)
	q := url.Values{}
	for _, f := range []struct{ name, help string }{
		{"agent", "only tasks of this agent `name`"},
		{"issuer", "only tasks whose agent this issuer (`name`) vouched for"},
		{"state", "only tasks in this `state`: active, completed, expired or revoked"},
		{"template", "only tasks of this template `name`"},
		{"cursor", "the next page after this `cursor` (printed by the previous page)"},
	} {
		fs.Func(f.name, f.help, func(v string) error { q.Set(f.name, v); return nil })
	}
	limit := fs.Int("limit", 100, "at most this many tasks in a page (1 to 1000)")
	c, _, err := admin.parse(args, 0)
	if err != nil {
		return err
	}
	q.Set("limit", fmt.Sprint(*limit))
	var ans struct {
		Tasks []struct {
			ID, State, Agent, Issuer, Template string
			Deadline                           string `json:"deadline"`
			EndReason                          string `json:"end_reason"`
		} `json:"tasks"`
		NextCursor string `json:"next_cursor"`
	}
	if printed, err := c.show(ctx, http.MethodGet, "/v1/admin/tasks?"+q.Encode(), nil, &ans); printed || err != nil {
		return err
	}
	rows := [][]string{}
	for _, t := range ans.Tasks {
		rows = append(rows, []string{t.ID, t.State, t.Issuer + "/" + t.Agent, t.Template, t.Deadline, t.EndReason})
	}
	c.table("TASK\tSTATE\tAGENT\tTEMPLATE\tDEADLINE\tEND REASON", rows)
	if ans.NextCursor != "" {
		fmt.Fprintf(e.stdout, "more tasks match: add --cursor %s for the next page\n", printable.Escape(ans.NextCursor))
	}
	return nil
}

// cmdTaskShow is `valet tasks show ID`.
func cmdTaskShow(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("tasks show ID", "Show a task and the ids of its credentials (viewer role).")
	admin := adminFlags(fs, e)
	c, pos, err := admin.parse(args, 1)
	if err != nil {
		return err
	}
	var ans struct {
		Task struct {
			ID, State, Agent, Issuer, Template, Intent string
			Deadline                                   string `json:"deadline"`
			EndReason                                  string `json:"end_reason"`
		} `json:"task"`
		Credentials []struct {
			ID, Kind  string
			ExpiresAt string `json:"expires_at"`
		} `json:"credentials"`
	}
	if printed, err := c.show(ctx, http.MethodGet, "/v1/admin/tasks/"+url.PathEscape(pos[0]), nil, &ans); printed || err != nil {
		return err
	}
	t := ans.Task
	esc := printable.Escape
	fmt.Fprintf(e.stdout, "task      %s\nstate     %s %s\nagent     %s/%s\ntemplate  %s\nintent    %s\ndeadline  %s\n\n",
		esc(t.ID), esc(t.State), esc(t.EndReason), esc(t.Issuer), esc(t.Agent), esc(t.Template), esc(t.Intent), esc(t.Deadline))
	rows := [][]string{}
	for _, cr := range ans.Credentials {
		rows = append(rows, []string{cr.ID, cr.Kind, cr.ExpiresAt})
	}
	c.table("CREDENTIAL\tKIND\tEXPIRES", rows)
	return nil
}

// cmdTaskTimeline is `valet tasks timeline ID`.
func cmdTaskTimeline(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("tasks timeline ID", "Show a task's audit events in the order they happened (viewer role; needs the Redis audit stream).")
	admin := adminFlags(fs, e)
	c, pos, err := admin.parse(args, 1)
	if err != nil {
		return err
	}
	var ans struct {
		Events []struct {
			Time, Type, Actor, Outcome, Rule, Reason string
			Creds                                    []string       `json:"credentials"`
			Detail                                   map[string]any `json:"detail"`
		} `json:"events"`
	}
	if printed, err := c.show(ctx, http.MethodGet, "/v1/admin/tasks/"+url.PathEscape(pos[0])+"/timeline", nil, &ans); printed || err != nil {
		return err
	}
	rows := [][]string{}
	for _, ev := range ans.Events {
		if ev.Type == "tool.called" && ev.Reason == "" { // what the agent did: the tool, and its side effect if any
			var what []string
			for _, k := range []string{"tool", "side_effect"} {
				if v, _ := ev.Detail[k].(string); v != "" {
					what = append(what, v)
				}
			}
			ev.Reason = strings.Join(what, " ")
		}
		rows = append(rows, []string{ev.Time, ev.Type, ev.Actor, ev.Outcome + ev.Rule, ev.Reason, strings.Join(ev.Creds, ",")})
	}
	c.table("TIME\tEVENT\tACTOR\tOUTCOME\tREASON\tCREDENTIALS", rows)
	return nil
}

// cmdAuditVerify is `valet audit verify FILE` and `valet audit verify --redis URL`.
func cmdAuditVerify(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("audit verify FILE | --redis URL [--prefix valet]",
		"Check the hash chain of an audit file, or of the audit stream in Redis, and say where it breaks.")
	redisURL := fs.String("redis", "", "verify the audit stream in the Redis at this `URL` instead of a file")
	prefix := fs.String("prefix", "valet", "Redis key `prefix`")
	files, err := fs.parse(args)
	if err != nil {
		return err
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
		fmt.Fprintf(e.stdout, "ok: %d events in %d chains verify\n", rep.Events, len(rep.Chains))
		if rep.Duplicates > 0 {
			fmt.Fprintf(e.stdout, "note: %d entries repeat the entry before them byte for byte (retried appends), not edits\n", rep.Duplicates)
		}
		if len(rep.Trimmed) > 0 {
			fmt.Fprintf(e.stdout, "note: %d chains start after their first record: the stream was trimmed by retention; the audit file is the full copy\n", len(rep.Trimmed))
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
		fmt.Fprintf(e.stdout, "ok: %d events verify; last hash %s\n", last.Seq, printable.Escape(last.Hash))
		return nil
	}
	return usageError("usage: valet audit verify FILE | --redis URL [--prefix valet] (see --help)")
}
