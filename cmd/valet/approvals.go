package main

import (
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

	"go.yaml.in/yaml/v3"

	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/printable"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/stepup"
)

// devApproverSecret is the secret of the "approver" client of `valet dev`.
const devApproverSecret = "dev-approver-not-for-production"

// devAgentConfig is the sensitive-action settings of `valet dev`: one approver
// client, and resource labels from a YAML file when given.
func devAgentConfig(resourcesFile string) (server.StepUpOptions, error) {
	cfg := server.StepUpOptions{Approvals: stepup.ApprovalConfig{
		Clients: []clientauth.Client{{ID: "approver", SecretSHA256: sha256Of(devApproverSecret)}},
	}}
	if resourcesFile == "" {
		return cfg, nil
	}
	b, err := os.ReadFile(resourcesFile)
	if err != nil {
		return cfg, fmt.Errorf("--resources: %w", err)
	}
	if err := yaml.Unmarshal(b, &cfg.Resources); err != nil {
		return cfg, fmt.Errorf("--resources %s: %w", resourcesFile, err)
	}
	return cfg, nil
}

// cmdApprovals is `valet approvals ls`, `approve ID` and `deny ID` (verb).
func cmdApprovals(ctx context.Context, e env, verb string, args []string) error {
	synopsis, about, npos := "approvals "+verb+" ID [--reason TEXT]", "Decide a pending approval, as an approver client (approvals.clients in the config).", 1
	if verb == "ls" {
		synopsis, npos = "approvals ls [--state S] [--agent A] [--template T] [--task ID] [--limit N] [--cursor C]", 0
		about = "List approvals, as an approver client: oldest first (by created_at, then id). One page of --limit\n" +
			"approvals; when more match, the command says so and how to get the next page (--cursor)."
	}
	fs := e.newFlags(synopsis, about)
	server, out := serverFlags(fs, e)
	client := fs.String("client", e.getenv("VALET_APPROVER_CLIENT"), "approver client `id` (env VALET_APPROVER_CLIENT)")
	secret := fs.String("secret", e.getenv("VALET_APPROVER_SECRET"), "approver client `secret` (env VALET_APPROVER_SECRET)")
	filter := url.Values{}
	var reason *string
	if verb == "ls" {
		for _, f := range []struct{ name, param, help string }{
			{"agent", "agent", "only approvals of this agent `name` (or an actor of its chain)"},
			{"template", "template", "only approvals of tasks of this template `name`"},
			{"task", "task_id", "only approvals of this task `id`"},
			{"state", "state", "only approvals in this `state`: pending (default), approved, denied, expired or issued"},
			{"limit", "limit", "at most this `many` approvals in a page (1 to 1000, default 100)"},
			{"cursor", "cursor", "the next page after this `cursor` (printed by the previous page)"},
		} {
			fs.Func(f.name, f.help, func(v string) error { filter.Set(f.param, v); return nil })
		}
	} else {
		reason = fs.String("reason", "", "why (recorded with the decision)")
	}
	pos, err := fs.parseN(args, npos)
	if err != nil {
		return err
	}
	if *client == "" || *secret == "" {
		return usageError("approvals: --client and --secret (or VALET_APPROVER_CLIENT and VALET_APPROVER_SECRET) are required")
	}
	if err := checkOutput(*out); err != nil {
		return err
	}
	c := &approverClient{base: strings.TrimSuffix(*server, "/"), id: *client, secret: *secret,
		http: &http.Client{Timeout: 10 * time.Second}}
	if verb == "ls" {
		var body struct {
			Approvals  []stepup.Approval `json:"approvals"`
			NextCursor string            `json:"next_cursor"`
		}
		raw, err := c.do(ctx, http.MethodGet, "/v1/approvals?"+filter.Encode(), nil, &body)
		if err != nil {
			return err
		}
		if *out == "json" {
			_, err = e.stdout.Write(append(printable.JSON(raw), '\n'))
			return err
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTASK\tAGENT\tTEMPLATE\tTOOL\tARGS\tINTENT\tEXPIRES")
		for _, a := range body.Approvals {
			esc := printable.Escape
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", esc(a.ID), esc(a.TaskID), esc(agentChain(a)), esc(a.Template), esc(a.Tool),
				cell(string(a.Args), 60), cell(a.Intent, 40), a.ExpiresAt.UTC().Format(time.RFC3339))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if body.NextCursor != "" {
			fmt.Fprintf(e.stdout, "more approvals match: add --cursor %s for the next page\n", printable.Escape(body.NextCursor))
		}
		return nil
	}
	id := pos[0]
	var payload io.Reader
	if *reason != "" {
		b, _ := json.Marshal(map[string]string{"reason": *reason}) // a string map always encodes
		payload = strings.NewReader(string(b))
	}
	var body struct {
		Approval stepup.Approval `json:"approval"`
	}
	raw, err := c.do(ctx, http.MethodPost, "/v1/approvals/"+url.PathEscape(id)+"/"+verb, payload, &body)
	if err != nil {
		return err
	}
	if *out == "json" {
		_, err := e.stdout.Write(printable.JSON(raw))
		return err
	}
	a := body.Approval
	esc := printable.Escape
	fmt.Fprintf(e.stdout, "approval %s: %s by %s (task %s, tool %s)\n", esc(a.ID), esc(string(a.State)), esc(a.DecidedBy), esc(a.TaskID), esc(a.Tool))
	return nil
}

func agentChain(a stepup.Approval) string {
	if len(a.Act) > 1 {
		return strings.Join(a.Act, "<")
	}
	return a.Agent
}

// cell keeps a table cell on one line and at most n runes, escaped
// (printable.Escape).
func cell(s string, n int) string {
	s = printable.Escape(strings.Join(strings.Fields(s), " "))
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

type approverClient struct {
	base, id, secret string
	http             *http.Client
}

// do calls the approver API and decodes a 2xx answer into v; anything else
// is an error carrying Valet's message.
func (c *approverClient) do(ctx context.Context, method, path string, body io.Reader, v any) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(c.id, c.secret)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling Valet: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("reading Valet's answer: %w", err)
	}
	if resp.StatusCode == http.StatusUnauthorized {
		return nil, fmt.Errorf("%s %s: Valet did not accept approver client %q with that secret: check --client and --secret (or VALET_APPROVER_CLIENT and VALET_APPROVER_SECRET) against approvals.clients in its config",
			method, path, printable.Escape(c.id))
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error, Message string
		}
		_ = json.Unmarshal(raw, &e)
		return nil, fmt.Errorf("%s %s: %d %s: %s", method, path, resp.StatusCode, printable.Escape(e.Error), printable.Escape(e.Message))
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("decoding Valet's answer: %w", err)
	}
	return raw, nil
}
