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

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/printable"
)

// devApproverSecret is the secret of the "approver" client of `valet dev`.
const devApproverSecret = "dev-approver-not-for-production"

// devAgentConfig is the agent controls of `valet dev`: one approver
// client, and resource labels from a YAML file when given.
func devAgentConfig(resourcesFile string) (broker.AgentConfig, error) {
	cfg := broker.AgentConfig{Approvals: broker.ApprovalConfig{
		Clients: []broker.Client{{ID: "approver", SecretSHA256: sha256Of(devApproverSecret)}},
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

// cmdApprovals is `valet approvals ls|approve ID|deny ID`.
func cmdApprovals(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	const use = "usage: valet approvals ls [--agent A] [--template T] [--task ID] [--state S]|approve ID|deny ID [--server URL] [--client ID] [--secret S] [--reason TEXT] [-o table|json]"
	if len(args) == 0 {
		return usageError(use)
	}
	verb, rest := args[0], args[1:]
	var id string
	switch verb {
	case "ls":
	case "approve", "deny":
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			return usageError(use)
		}
		id, rest = rest[0], rest[1:]
	default:
		return usageError(use)
	}
	fs := newFlags("approvals " + verb)
	server := fs.String("server", envOr(getenv, "VALET_SERVER", "http://127.0.0.1:8080"), "Valet's URL (env VALET_SERVER)")
	client := fs.String("client", getenv("VALET_APPROVER_CLIENT"), "approver client id (env VALET_APPROVER_CLIENT)")
	secret := fs.String("secret", getenv("VALET_APPROVER_SECRET"), "approver client secret (env VALET_APPROVER_SECRET)")
	reason := fs.String("reason", "", "why (recorded with the decision)")
	out := fs.String("o", "table", "output: table or json")
	filter := url.Values{}
	for _, f := range []struct{ name, param, help string }{
		{"agent", "agent", "only approvals of this agent (or an actor of its chain)"},
		{"template", "template", "only approvals of tasks of this template"},
		{"task", "task_id", "only approvals of this task"},
		{"state", "state", "pending (default), approved, denied, expired or issued"},
	} {
		fs.Func(f.name, f.help, func(v string) error { filter.Set(f.param, v); return nil })
	}
	if err := parseFlags(fs, rest); err != nil {
		return err
	}
	if *client == "" || *secret == "" {
		return usageError("approvals: --client and --secret (or VALET_APPROVER_CLIENT and VALET_APPROVER_SECRET) are required")
	}
	if *out != "table" && *out != "json" {
		return usageError("approvals: -o must be table or json")
	}
	c := &approverClient{base: strings.TrimSuffix(*server, "/"), id: *client, secret: *secret,
		http: &http.Client{Timeout: 10 * time.Second}}
	if verb == "ls" {
		// Every page, in Valet's order (created_at, then id); at most 100.
		var all []broker.Approval
		for range 100 {
			var body struct {
				Approvals  []broker.Approval `json:"approvals"`
				NextCursor string            `json:"next_cursor"`
			}
			if _, err := c.do(ctx, http.MethodGet, "/v1/approvals?"+filter.Encode(), nil, &body); err != nil {
				return err
			}
			all = append(all, body.Approvals...)
			if body.NextCursor == "" {
				break
			}
			filter.Set("cursor", body.NextCursor)
		}
		if *out == "json" {
			b, err := json.Marshal(map[string]any{"approvals": all})
			if err != nil {
				return err
			}
			_, err = stdout.Write(append(printable.JSON(b), '\n'))
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTASK\tAGENT\tTEMPLATE\tTOOL\tARGS\tINTENT\tEXPIRES")
		for _, a := range all {
			e := printable.Escape
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e(a.ID), e(a.TaskID), e(agentChain(a)), e(a.Template), e(a.Tool),
				cell(string(a.Args), 60), cell(a.Intent, 40), a.ExpiresAt.UTC().Format(time.RFC3339))
		}
		return tw.Flush()
	}
	var payload io.Reader
	if *reason != "" {
		b, _ := json.Marshal(map[string]string{"reason": *reason}) // a string map always encodes
		payload = strings.NewReader(string(b))
	}
	var body struct {
		Approval broker.Approval `json:"approval"`
	}
	raw, err := c.do(ctx, http.MethodPost, "/v1/approvals/"+url.PathEscape(id)+"/"+verb, payload, &body)
	if err != nil {
		return err
	}
	if *out == "json" {
		_, err := stdout.Write(printable.JSON(raw))
		return err
	}
	a := body.Approval
	e := printable.Escape
	fmt.Fprintf(stdout, "approval %s: %s by %s (task %s, tool %s)\n", e(a.ID), e(string(a.State)), e(a.DecidedBy), e(a.TaskID), e(a.Tool))
	return nil
}

func agentChain(a broker.Approval) string {
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
