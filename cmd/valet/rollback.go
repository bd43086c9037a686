package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/valet-dev/valet/internal/printable"
)

// rollbackStep is one undo step as Valet lists it.
type rollbackStep struct {
	EventID         string `json:"event_id"`
	Tool            string `json:"tool"`
	SideEffect      string `json:"side_effect"`
	ReportedAt      string `json:"reported_at"`
	Late            bool   `json:"late"`
	Agent           string `json:"agent"`
	Reporter        string `json:"reporter"`
	ReportedWith    string `json:"reported_with"`
	ReporterRevoked bool   `json:"reporter_revoked"`
	RevokedReason   string `json:"reporter_revoked_reason"`
	Undo            struct {
		URL, Method  string
		QueryRemoved bool   `json:"query_removed"`
		BodySHA256   string `json:"body_sha256"`
		BodyBytes    int    `json:"body_bytes"`
		BodyPreview  string `json:"body_preview"`
	} `json:"undo"`
	Allowed bool   `json:"allowed"`
	State   string `json:"state"`
	Status  int    `json:"status"`
	Error   string `json:"error"`
}

// undoText is the step's method and URL (a query Valet hid is shown as "?…").
func (s rollbackStep) undoText() string {
	u := s.Undo.Method + " " + s.Undo.URL
	if s.Undo.QueryRemoved {
		u += "?…"
	}
	return u
}

// reporterText says who reported the step, and flags a revoked reporter.
func (s rollbackStep) reporterText() string {
	r := s.Reporter + " (" + s.ReportedWith + ")"
	if s.ReporterRevoked {
		r += " REVOKED"
	}
	return r
}

// askYes asks a yes/no question on the terminal (default no). terminal is
// false when stdin is not a terminal: then nothing is asked. Tests replace it.
var askYes = func(question string, stderr io.Writer) (yes, terminal bool) {
	fi, err := os.Stdin.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false, false
	}
	fmt.Fprint(stderr, question+" [y/N] ")
	line, _ := bufio.NewReader(io.LimitReader(os.Stdin, 256)).ReadString('\n')
	a := strings.ToLower(strings.TrimSpace(line))
	return a == "y" || a == "yes", true
}

// cmdRollback is `valet tasks rollback ID [--dry-run] [--continue] [--yes]`:
// it lists a task's undo steps, newest first, with who reported each, and
// (without --dry-run) asks Valet to call each undo webhook in that order,
// printing each outcome. Steps whose reporter has since been revoked were
// chosen by a suspect: they run only after a y on the terminal, or with
// --yes. It stops at the first failure unless --continue; steps already
// done are skipped. Needs the responder role. Every field an agent or tool
// server supplied is printed escaped (printable.Escape).
func cmdRollback(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("tasks rollback ID [--dry-run] [--continue] [--yes]",
		"List a task's undo steps, newest first, with who reported each, and (without --dry-run) call each undo\n"+
			"webhook in that order (responder role). Steps reported by a principal revoked since run only after a y\n"+
			"on the terminal, or with --yes. Stops at the first failure unless --continue; steps done are skipped.")
	admin := adminFlags(fs, e)
	dry := fs.Bool("dry-run", false, "list the undo steps without calling them")
	cont := fs.Bool("continue", false, "go on after a failed step")
	yes := fs.Bool("yes", false, "run steps reported by a since-revoked principal without asking")
	c, pos, err := admin.parse(args, 1)
	if err != nil {
		return err
	}
	id := pos[0]
	if c.output == "json" && !*dry {
		return usageError("tasks rollback: -o json prints the plan, with --dry-run; a rollback prints each step as it runs")
	}
	base := "/v1/admin/tasks/" + url.PathEscape(id) + "/rollback"
	var plan struct {
		Steps []rollbackStep `json:"steps"`
	}
	raw, err := c.call(ctx, http.MethodGet, base, nil, &plan)
	if err != nil {
		return err
	}
	if *dry {
		if c.output == "json" {
			return c.json(raw)
		}
		rows := [][]string{}
		for i, s := range plan.Steps {
			rows = append(rows, []string{fmt.Sprint(i + 1), s.EventID, s.Tool, cell(printable.Escape(s.SideEffect), 40), s.undoText(),
				bodyText(s), s.reporterText(), allowedText(s.Allowed), s.State, lateText(s.Late)})
		}
		c.table("STEP\tEVENT\tTOOL\tSIDE EFFECT\tUNDO\tBODY\tREPORTED BY\tHOST\tSTATE\tREPORTED", rows)
		fmt.Fprintf(e.stdout, "dry run: %d undo steps, none called\n", len(plan.Steps))
		return nil
	}
	var suspect []string
	for i, s := range plan.Steps {
		if s.ReporterRevoked && s.State != "done" {
			suspect = append(suspect, fmt.Sprintf("  step %d %s %s: %s, reported by %s: %s", i+1, printable.Escape(s.EventID),
				printable.Escape(s.Tool), printable.Escape(s.undoText()), printable.Escape(s.reporterText()), printable.Escape(s.RevokedReason)))
		}
	}
	if len(suspect) > 0 && !*yes {
		fmt.Fprintf(e.stderr, "%d undo steps were reported by a principal revoked since (they chose what these calls do):\n%s\n",
			len(suspect), strings.Join(suspect, "\n"))
		ok, terminal := askYes("run them?", e.stderr)
		switch {
		case !terminal:
			return errors.New("rollback not run: steps reported by a revoked principal need confirmation (check with --dry-run, then --yes)")
		case !ok:
			return errors.New("rollback not run: not confirmed")
		}
	}
	var results []rollbackStep
	failed := 0
	for i, s := range plan.Steps {
		if s.State == "done" {
			fmt.Fprintf(e.stdout, "step %d %s %s: already done, skipped\n", i+1, printable.Escape(s.EventID), printable.Escape(s.Tool))
			continue
		}
		var ans struct {
			Step rollbackStep `json:"step"`
		}
		path := base + "/" + url.PathEscape(s.EventID)
		if s.ReporterRevoked { // confirmed above (terminal or --yes)
			path += "?confirm=revoked_reporter"
		}
		_, err := c.call(ctx, http.MethodPost, path, nil, &ans)
		if err == nil && ans.Step.State != "done" {
			err = fmt.Errorf("%s", ans.Step.Error)
		}
		if err != nil {
			failed++
			fmt.Fprintf(e.stdout, "step %d %s %s: FAILED: %s\n", i+1, printable.Escape(s.EventID), printable.Escape(s.Tool), printable.Escape(err.Error()))
			results = append(results, ans.Step)
			if !*cont {
				return fmt.Errorf("rollback stopped at step %d of %d (use --continue to go on)", i+1, len(plan.Steps))
			}
			continue
		}
		results = append(results, ans.Step)
		fmt.Fprintf(e.stdout, "step %d %s %s: done (%s → %d)\n", i+1, printable.Escape(s.EventID), printable.Escape(s.Tool), printable.Escape(s.undoText()), ans.Step.Status)
	}
	if failed > 0 {
		return errors.New(fmt.Sprint(failed, " of ", len(plan.Steps), " undo steps failed"))
	}
	fmt.Fprintf(e.stdout, "rollback of %s: %d undo steps done\n", printable.Escape(id), len(plan.Steps))
	return nil
}

// bodyText is the body preview Valet gives (redacted, escaped, bounded).
func bodyText(s rollbackStep) string {
	if s.Undo.BodyBytes == 0 {
		return "-"
	}
	return fmt.Sprintf("%s (%d bytes)", cell(s.Undo.BodyPreview, 60), s.Undo.BodyBytes)
}

func allowedText(ok bool) string {
	if ok {
		return "allowed"
	}
	return "NOT ALLOWED"
}

func lateText(late bool) string {
	if late {
		return "late (task ended or token revoked)"
	}
	return "during the task"
}
