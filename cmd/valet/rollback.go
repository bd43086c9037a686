package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// rollbackStep is one undo step as Valet lists it.
type rollbackStep struct {
	EventID    string `json:"event_id"`
	Tool       string `json:"tool"`
	SideEffect string `json:"side_effect"`
	ReportedAt string `json:"reported_at"`
	Late       bool   `json:"late"`
	Undo       struct {
		URL, Method string
		BodySHA256  string `json:"body_sha256"`
	} `json:"undo"`
	Allowed bool   `json:"allowed"`
	State   string `json:"state"`
	Status  int    `json:"status"`
	Error   string `json:"error"`
}

// cmdRollback is `valet tasks rollback ID [--dry-run] [--continue]`: it
// lists a task's undo steps, newest first, and (without --dry-run) asks
// Valet to call each undo webhook in that order, printing each outcome.
// It stops at the first failure unless --continue; steps already done are
// skipped. Needs the responder role.
func cmdRollback(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	const usage = "usage: valet tasks rollback ID [--dry-run] [--continue]"
	if len(args) < 1 {
		return usageError(usage)
	}
	id, rest := args[0], args[1:]
	fs := newFlags("tasks rollback")
	server, token, output := adminFlags(fs, getenv)
	dry := fs.Bool("dry-run", false, "list the undo steps without calling them")
	cont := fs.Bool("continue", false, "go on after a failed step")
	if err := parseFlags(fs, rest); err != nil {
		return err
	}
	c, err := newAdminClient(*server, *token, *output, stdout, stderr)
	if err != nil {
		return err
	}
	base := "/v1/admin/tasks/" + url.PathEscape(id) + "/rollback"
	var plan struct {
		Steps []rollbackStep `json:"steps"`
	}
	if _, err := c.call(ctx, http.MethodGet, base, nil, &plan); err != nil {
		return err
	}
	if *dry {
		if c.output == "json" {
			return c.json(plan.Steps)
		}
		rows := [][]string{}
		for i, s := range plan.Steps {
			rows = append(rows, []string{fmt.Sprint(i + 1), s.EventID, s.Tool, s.SideEffect, s.Undo.Method + " " + s.Undo.URL,
				allowedText(s.Allowed), s.State, lateText(s.Late)})
		}
		c.table("STEP\tEVENT\tTOOL\tSIDE EFFECT\tUNDO\tHOST\tSTATE\tREPORTED", rows)
		fmt.Fprintf(stdout, "dry run: %d undo steps, none called\n", len(plan.Steps))
		return nil
	}
	var results []rollbackStep
	failed := 0
	for i, s := range plan.Steps {
		if s.State == "done" {
			fmt.Fprintf(stdout, "step %d %s %s: already done, skipped\n", i+1, s.EventID, s.Tool)
			continue
		}
		var ans struct {
			Step rollbackStep `json:"step"`
		}
		_, err := c.call(ctx, http.MethodPost, base+"/"+url.PathEscape(s.EventID), nil, &ans)
		if err == nil && ans.Step.State != "done" {
			err = fmt.Errorf("%s", ans.Step.Error)
		}
		if err != nil {
			failed++
			fmt.Fprintf(stdout, "step %d %s %s: FAILED: %v\n", i+1, s.EventID, s.Tool, err)
			results = append(results, ans.Step)
			if !*cont {
				return fmt.Errorf("rollback stopped at step %d of %d (use --continue to go on)", i+1, len(plan.Steps))
			}
			continue
		}
		results = append(results, ans.Step)
		fmt.Fprintf(stdout, "step %d %s %s: done (%s %s → %d)\n", i+1, s.EventID, s.Tool, s.Undo.Method, s.Undo.URL, ans.Step.Status)
	}
	if failed > 0 {
		return errors.New(fmt.Sprint(failed, " of ", len(plan.Steps), " undo steps failed"))
	}
	fmt.Fprintf(stdout, "rollback of %s: %d undo steps done\n", id, len(plan.Steps))
	return nil
}

func allowedText(ok bool) string {
	if ok {
		return "allowed"
	}
	return "NOT ALLOWED"
}

func lateText(late bool) string {
	if late {
		return "after the task ended"
	}
	return "during the task"
}
