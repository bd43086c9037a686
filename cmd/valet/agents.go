package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/valet-dev/valet/internal/printable"
)

type agentView struct {
	ID        string            `json:"id"`
	Issuer    string            `json:"issuer"`
	Subject   string            `json:"subject"`
	FirstSeen string            `json:"first_seen"`
	LastSeen  string            `json:"last_seen"`
	Templates []string          `json:"templates"`
	Labels    map[string]string `json:"labels"`
}

// labelsText is labels as k=v pairs, sorted by key.
func labelsText(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

// cmdAgentsLs is `valet agents ls`: one page of the agent inventory.
func cmdAgentsLs(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("agents ls [--issuer I] [--subject-prefix P] [--label k=v] [--template T] [--since 24h] [--sort S] [--limit N] [--cursor C]",
		"List the agents Valet granted tasks (viewer role): first and last seen, templates used and owner labels.\n"+
			"--sort last_seen (default) and first_seen list newest first, subject A to Z. One page of --limit agents;\n"+
			"when there may be more, the command says how to get the next page (--cursor).")
	admin := adminFlags(fs, e)
	q := url.Values{}
	for _, f := range []struct{ flag, param, help string }{
		{"issuer", "issuer", "only agents this issuer (`name`) vouched for"},
		{"subject-prefix", "subject_prefix", "only agents whose subject starts with this `prefix`"},
		{"label", "label", "only agents with this owner label (`key=value`)"},
		{"template", "template", "only agents that used this template `name`"},
		{"sort", "sort", "order: last_seen, first_seen or subject (`order`)"},
		{"cursor", "cursor", "the next page after this `cursor` (printed by the previous page)"},
	} {
		fs.Func(f.flag, f.help, func(v string) error { q.Set(f.param, v); return nil })
	}
	since := fs.Duration("since", 0, "only agents seen in the last `duration` (e.g. 24h)")
	limit := fs.Int("limit", 50, "at most this many agents in a page (1 to 500)")
	c, _, err := admin.parse(args, 0)
	if err != nil {
		return err
	}
	if *since > 0 {
		q.Set("seen_since", time.Now().Add(-*since).UTC().Format(time.RFC3339))
	}
	q.Set("limit", fmt.Sprint(*limit))
	var ans struct {
		Agents     []agentView `json:"agents"`
		NextCursor string      `json:"next_cursor"`
	}
	if printed, err := c.show(ctx, http.MethodGet, "/v1/admin/agents?"+q.Encode(), nil, &ans); printed || err != nil {
		return err
	}
	rows := [][]string{}
	for _, a := range ans.Agents {
		rows = append(rows, []string{a.ID, a.Issuer + "/" + a.Subject, labelsText(a.Labels), strings.Join(a.Templates, ","), a.FirstSeen, a.LastSeen})
	}
	c.table("ID\tAGENT\tLABELS\tTEMPLATES\tFIRST SEEN\tLAST SEEN", rows)
	if ans.NextCursor != "" {
		fmt.Fprintf(e.stdout, "there may be more agents: add --cursor %s for the next page\n", printable.Escape(ans.NextCursor))
	}
	return nil
}

// cmdAgentShow is `valet agents show ID`.
func cmdAgentShow(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("agents show ID", "Show an agent of the inventory: its labels, templates, live tasks and the controls in force over it (viewer role).")
	c, pos, err := adminFlags(fs, e).parse(args, 1)
	if err != nil {
		return err
	}
	var ans struct {
		Agent     agentView `json:"agent"`
		LiveTasks []struct {
			ID, Template, Intent string
			Deadline             string `json:"deadline"`
		} `json:"live_tasks"`
		Controls []struct{ Kind, Target, Issuer, Reason, By string } `json:"controls"`
	}
	if printed, err := c.show(ctx, http.MethodGet, "/v1/admin/agents/"+url.PathEscape(pos[0]), nil, &ans); printed || err != nil {
		return err
	}
	a, esc := ans.Agent, printable.Escape
	fmt.Fprintf(e.stdout, "agent       %s/%s\nid          %s\nlabels      %s\ntemplates   %s\nfirst seen  %s\nlast seen   %s\n\n",
		esc(a.Issuer), esc(a.Subject), esc(a.ID), esc(labelsText(a.Labels)), esc(strings.Join(a.Templates, ",")), esc(a.FirstSeen), esc(a.LastSeen))
	rows := [][]string{}
	for _, t := range ans.LiveTasks {
		rows = append(rows, []string{t.ID, t.Template, t.Deadline, printable.Truncate(t.Intent, 60)})
	}
	c.table("LIVE TASK\tTEMPLATE\tDEADLINE\tINTENT", rows)
	if len(ans.Controls) > 0 {
		fmt.Fprintln(e.stdout)
		rows = rows[:0]
		for _, k := range ans.Controls {
			rows = append(rows, []string{k.Kind, k.Target, k.Issuer, k.By, k.Reason})
		}
		c.table("CONTROL\tTARGET\tISSUER\tBY\tREASON", rows)
	}
	return nil
}

// freezeLabel is `valet freeze --label k=v [--dry-run] [--revoke] [--reason R]`:
// freeze every agent of the inventory with that owner label.
func freezeLabel(ctx context.Context, c *adminClient, label, reason string, revoke, dry bool) error {
	body := map[string]any{"kind": "freeze_agent", "label": label, "reason": reason, "revoke": revoke, "dry_run": dry}
	var ans struct {
		Agents []struct{ Issuer, Subject string } `json:"agents"`
		Tasks  int                                `json:"tasks_matched"`
		Creds  int                                `json:"matched"`
		Job    *jobView                           `json:"job"`
	}
	raw, err := c.call(ctx, http.MethodPost, "/v1/admin/controls", body, &ans)
	if err != nil {
		return err
	}
	if c.output == "json" && ans.Job == nil {
		return c.json(raw)
	}
	names := make([]string, len(ans.Agents))
	for i, a := range ans.Agents {
		names[i] = a.Issuer + "/" + a.Subject
	}
	if c.output != "json" {
		if dry {
			fmt.Fprintf(c.stdout, "dry run: freezing %s would freeze %d agents with %d live tasks (%d credentials)\nagents: %s\n",
				printable.Escape(label), len(ans.Agents), ans.Tasks, ans.Creds, printable.Escape(strings.Join(names, " ")))
			return nil
		}
		fmt.Fprintf(c.stdout, "froze %d agents of %s on every replica: %s\n", len(ans.Agents), printable.Escape(label), printable.Escape(strings.Join(names, " ")))
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

// hasFlag reports whether args hold --name or -name (with or without
// =value), before a "--".
func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		a = strings.TrimLeft(a, "-")
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}
