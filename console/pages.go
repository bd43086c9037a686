package console

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/inventory"
	"github.com/valet-dev/valet/stepup"
)

// pageSize is the number of rows of one page of tasks or agents.
const pageSize = 50

func (c *Console) overview(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	cs, err := c.cfg.Admin.Controls(r.Context())
	if err != nil {
		return "", err
	}
	active, _, err := c.cfg.Admin.TaskPage(r.Context(), incident.TaskFilter{State: broker.StateActive, Limit: 20})
	if err != nil {
		return "", err
	}
	v.Title = "Overview"
	v.Data = struct {
		Controls []broker.Control
		Active   []broker.Task
		Live     bool
	}{cs, active, c.cfg.Trail != nil}
	return "overview", nil
}

// liveEvent is one row of the live view, as the page's script shows it
// (with textContent: nothing here is ever parsed as HTML).
type liveEvent struct {
	Time     string `json:"time"`
	Type     string `json:"type"`
	Outcome  string `json:"outcome"`
	Actor    string `json:"actor"`
	TaskID   string `json:"task_id"`
	Template string `json:"template"`
	Reason   string `json:"reason"`
}

// liveType reports whether the live view shows e: grants, denials,
// completions, expiries, revocations and controls (not admin reads).
func liveType(e broker.Event) bool {
	if strings.HasPrefix(e.Type, "admin.") {
		return false
	}
	switch {
	case strings.HasPrefix(e.Type, "task."), strings.HasPrefix(e.Type, "revocation."), strings.HasPrefix(e.Type, "control."),
		e.Type == "credential.revoked", e.Type == "action.granted", e.Type == "approval.requested":
		return true
	}
	return e.Outcome == "denied"
}

// live is the live view's poll: the events after the cursor it was given.
func (c *Console) live(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	if c.cfg.Trail == nil {
		return "", &broker.Error{Code: broker.CodeNotFound, Message: "this broker has no audit stream to watch"}
	}
	after := r.URL.Query().Get("after")
	if len(after) > 64 {
		return "", &broker.Error{Code: broker.CodeInvalid, Message: "after is not a cursor Valet gave", Field: "after"}
	}
	evs, cursor, err := c.cfg.Trail.Recent(r.Context(), after, 200)
	if err != nil {
		return "", broker.Unavailable("the audit stream", err)
	}
	out := []liveEvent{}
	for _, e := range evs {
		if liveType(e) {
			out = append(out, liveEvent{Time: e.Time.UTC().Format(time.RFC3339), Type: e.Type, Outcome: e.Outcome, Actor: bounded(e.Actor, 200),
				TaskID: bounded(e.TaskID, 80), Template: bounded(e.Template, 80), Reason: bounded(e.Reason, 300)})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"cursor": cursor, "events": out})
	return "", nil
}

// taskSearch is the task search form as the page shows it back.
type taskSearch struct {
	Agent, Template, Issuer, State, Since, Until string
	Tasks                                        []broker.Task
	Next                                         string
	States                                       []string
}

func (c *Console) tasks(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	q := r.URL.Query()
	s := taskSearch{Agent: q.Get("agent"), Template: q.Get("template"), Issuer: q.Get("issuer"), State: q.Get("state"),
		Since: q.Get("since"), Until: q.Get("until"), States: []string{"", "active", "completed", "expired", "revoked"}}
	v.Title, v.Data = "Tasks", &s
	f := incident.TaskFilter{Agent: s.Agent, Template: s.Template, Issuer: s.Issuer, State: broker.State(s.State), Limit: pageSize, Cursor: q.Get("cursor")}
	switch f.State {
	case "", broker.StateActive, broker.StateCompleted, broker.StateExpired, broker.StateRevoked:
	default:
		return "", &broker.Error{Code: broker.CodeInvalid, Message: "state must be active, completed, expired or revoked", Field: "state"}
	}
	for _, x := range []struct{ name, v string }{{"agent", s.Agent}, {"template", s.Template}, {"issuer", s.Issuer}} {
		if len(x.v) > 256 {
			return "", &broker.Error{Code: broker.CodeInvalid, Message: x.name + " is longer than 256 characters", Field: x.name}
		}
	}
	since, err := parseTime("since", s.Since)
	if err != nil {
		return "", err
	}
	until, err := parseTime("until", s.Until)
	if err != nil {
		return "", err
	}
	// Tasks come newest first: skip pages newer than until, stop at the
	// first task older than since. A page may show fewer rows than
	// pageSize; its next link goes on from where this one stopped.
	s.Tasks = []broker.Task{}
	for range 20 {
		page, next, err := c.cfg.Admin.TaskPage(r.Context(), f)
		if err != nil {
			return "", err
		}
		older := false
		for _, t := range page {
			switch {
			case !until.IsZero() && t.CreatedAt.After(until):
			case !since.IsZero() && t.CreatedAt.Before(since):
				older = true
			default:
				s.Tasks = append(s.Tasks, t)
			}
		}
		if older {
			next = ""
		}
		s.Next = next
		if len(s.Tasks) > 0 || next == "" {
			break
		}
		f.Cursor = next
	}
	return "tasks", nil
}

func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, &broker.Error{Code: broker.CodeInvalid, Message: field + " must be a time like 2026-01-02T15:04 (UTC) or RFC 3339", Field: field}
}

// taskPage is one task with its timeline and its delegation tree.
type taskPage struct {
	Task     broker.Task
	Creds    []broker.Credential
	Timeline []broker.Event
	Tree     *tree
}

func (c *Console) task(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	id := chi.URLParam(r, "id")
	t, cs, err := c.cfg.Admin.TaskDetail(r.Context(), id)
	if err != nil {
		return "", err
	}
	p := taskPage{Task: t, Creds: cs}
	if p.Timeline, err = c.cfg.Admin.Timeline(r.Context(), id); err != nil && broker.ErrorCode(err) != broker.CodeNotFound {
		return "", err
	}
	members, err := c.treeMembers(r, t)
	if err != nil {
		return "", err
	}
	p.Tree = layoutTree(members, t.ID)
	v.Title, v.Data = "Task "+t.ID, p
	return "task", nil
}

// treeMembers reads every task of t's delegation tree: the tasks whose
// chain holds t's root agent and whose root is t's root.
func (c *Console) treeMembers(r *http.Request, t broker.Task) ([]broker.Task, error) {
	root := t.Root
	if root == "" {
		root = t.ID
	}
	links := t.Links()
	if len(links) == 0 {
		return []broker.Task{t}, nil
	}
	f := incident.TaskFilter{Agent: links[0].Agent, Issuer: links[0].Issuer, Limit: 1000}
	out := []broker.Task{}
	for range 5 {
		page, next, err := c.cfg.Admin.TaskPage(r.Context(), f)
		if err != nil {
			return nil, err
		}
		for _, x := range page {
			if x.ID == root || x.Root == root {
				out = append(out, x)
			}
		}
		if next == "" {
			break
		}
		f.Cursor = next
	}
	if !slices.ContainsFunc(out, func(x broker.Task) bool { return x.ID == t.ID }) {
		out = append(out, t)
	}
	return out, nil
}

type agentList struct {
	Prefix, Label, Template string
	Page                    inventory.Page
}

func (c *Console) agents(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	q := r.URL.Query()
	l := agentList{Prefix: q.Get("q"), Label: q.Get("label"), Template: q.Get("template")}
	v.Title, v.Data = "Agents", &l
	iq := inventory.Query{SubjectPrefix: l.Prefix, Template: l.Template, Sort: inventory.SortLastSeen, Cursor: q.Get("cursor"), Limit: pageSize}
	if l.Label != "" {
		k, val, ok := incident.LabelParts(l.Label)
		if !ok {
			return "", &broker.Error{Code: broker.CodeInvalid, Message: "label must be key=value", Field: "label"}
		}
		iq.LabelKey, iq.LabelValue = k, val
	}
	p, err := c.cfg.Admin.Agents(r.Context(), iq)
	if err != nil {
		return "", err
	}
	l.Page = p
	return "agents", nil
}

func (c *Console) agent(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	id := chi.URLParam(r, "id")
	if !inventory.ValidID(id) {
		return "", &broker.Error{Code: broker.CodeNotFound, Message: "agent ids look like agt_ and 32 hex digits", Field: "id"}
	}
	d, err := c.cfg.Admin.Agent(r.Context(), id)
	if err != nil {
		return "", err
	}
	v.Title, v.Data = "Agent "+d.Agent.Subject, d
	return "agent", nil
}

// actionForm is a revoke, freeze, quarantine or distrust as a responder
// fills it in, carried from the preview to the confirmation.
type actionForm struct {
	Kind   string // revoke, freeze_agent, quarantine_template, distrust_issuer
	Target string // agent, template or issuer; empty with a label
	Issuer string // narrows a freeze or a revoke by agent
	Label  string // freeze_agent by owner label
	Reason string
}

func readAction(r *http.Request) (actionForm, error) {
	f := actionForm{Kind: r.PostForm.Get("kind"), Target: strings.TrimSpace(r.PostForm.Get("target")),
		Issuer: strings.TrimSpace(r.PostForm.Get("issuer")), Label: strings.TrimSpace(r.PostForm.Get("label")), Reason: strings.TrimSpace(r.PostForm.Get("reason"))}
	switch f.Kind {
	case "revoke", string(broker.ControlFreezeAgent), string(broker.ControlQuarantineTemplate), string(broker.ControlDistrustIssuer):
	default:
		return f, &broker.Error{Code: broker.CodeInvalid, Message: "kind must be revoke, freeze_agent, quarantine_template or distrust_issuer", Field: "kind"}
	}
	if f.Label != "" && f.Kind != string(broker.ControlFreezeAgent) {
		return f, &broker.Error{Code: broker.CodeInvalid, Message: "a label selects agents to freeze: kind must be freeze_agent", Field: "label"}
	}
	if f.Label == "" && f.Target == "" {
		return f, &broker.Error{Code: broker.CodeInvalid, Message: "name the agent, template or issuer (or a label)", Field: "target"}
	}
	if f.Reason == "" {
		return f, &broker.Error{Code: broker.CodeInvalid, Message: "give a reason: it goes to the audit trail and the control", Field: "reason"}
	}
	return f, nil
}

// selector is what the action covers, as a revocation selector.
func (f actionForm) selector() incident.Selector {
	switch {
	case f.Label != "":
		return incident.Selector{Label: f.Label}
	case f.Kind == string(broker.ControlQuarantineTemplate):
		return incident.Selector{Template: f.Target}
	case f.Kind == string(broker.ControlDistrustIssuer):
		return incident.Selector{Issuer: f.Target}
	}
	return incident.Selector{Agent: f.Target, Issuer: f.Issuer}
}

// preview is the dry run: what the action would hit, changing nothing.
type preview struct {
	Form   actionForm
	Tasks  int
	Creds  int
	Agents []string
	More   bool
}

func (c *Console) preview(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	f, err := readAction(r)
	if err != nil {
		return "", err
	}
	p := preview{Form: f}
	if f.Label != "" {
		out, err := c.cfg.Admin.FreezeLabel(r.Context(), v.Who, f.Label, f.Reason, true, true)
		if err != nil {
			return "", err
		}
		p.Tasks, p.Creds = out.Tasks, out.Creds
		for _, a := range out.Agents {
			p.Agents = append(p.Agents, a.Issuer+"/"+a.Subject)
		}
	} else {
		d, err := c.cfg.Admin.DryRun(r.Context(), f.selector())
		if err != nil {
			return "", err
		}
		p.Tasks, p.Creds = d.Tasks, d.Matched
		if p.Agents, p.More, err = c.agentsOf(r, f.selector()); err != nil {
			return "", err
		}
	}
	v.Title, v.Data = "Preview", p
	return "preview", nil
}

// agentsOf names the distinct agents of the live tasks sel covers (at most
// 100 names; more is set past that).
func (c *Console) agentsOf(r *http.Request, sel incident.Selector) ([]string, bool, error) {
	tf := incident.TaskFilter{Agent: sel.Agent, Issuer: sel.Issuer, Template: sel.Template, State: broker.StateActive, Limit: 1000}
	ts, next, err := c.cfg.Admin.TaskPage(r.Context(), tf)
	if err != nil {
		return nil, false, err
	}
	names := []string{}
	for _, t := range ts {
		n := t.Issuer + "/" + t.Agent
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	more := next != "" || len(names) > 100
	return names[:min(len(names), 100)], more, nil
}

// act runs a previewed action, then shows its revocation job's progress.
func (c *Console) act(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	f, err := readAction(r)
	if err != nil {
		return "", err
	}
	var job *incident.RevocationJob
	switch {
	case f.Label != "":
		out, err := c.cfg.Admin.FreezeLabel(r.Context(), v.Who, f.Label, f.Reason, true, false)
		if err != nil {
			return "", err
		}
		job = out.Job
	case f.Kind == "revoke":
		j, err := c.cfg.Admin.Revoke(r.Context(), v.Who, f.selector(), f.Reason)
		if err != nil {
			return "", err
		}
		job = &j
	default:
		_, j, err := c.cfg.Admin.PutControl(r.Context(), v.Who, broker.Control{Kind: broker.ControlKind(f.Kind), Target: f.Target,
			Issuer: f.Issuer, Reason: f.Reason}, true, false)
		if err != nil {
			return "", err
		}
		job = j
	}
	if job == nil {
		http.Redirect(w, r, "/console/", http.StatusSeeOther)
		return "", nil
	}
	http.Redirect(w, r, "/console/jobs/"+job.ID, http.StatusSeeOther)
	return "", nil
}

func (c *Console) job(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	j, err := c.cfg.Admin.Job(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return "", err
	}
	v.Title, v.Data = "Revocation "+j.ID, j
	return "job", nil
}

// jobProgress is the progress bar's poll.
func (c *Console) jobProgress(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	j, err := c.cfg.Admin.Job(r.Context(), chi.URLParam(r, "id"))
	if err != nil {
		return "", err
	}
	writeJSON(w, http.StatusOK, map[string]any{"state": j.State, "tasks_matched": j.Tasks, "matched": j.Matched, "revoked": j.Revoked,
		"failed": j.Failed, "percent": pct(j)})
	return "", nil
}

func (c *Console) lift(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	ctl := broker.Control{Kind: broker.ControlKind(r.PostForm.Get("kind")), Target: r.PostForm.Get("target"), Issuer: r.PostForm.Get("issuer")}
	if err := incident.ValidateControl(ctl); err != nil {
		return "", err
	}
	if err := c.cfg.Admin.DeleteControl(r.Context(), v.Who, ctl); err != nil {
		return "", err
	}
	http.Redirect(w, r, "/console/", http.StatusSeeOther)
	return "", nil
}

type approvalsPage struct {
	State     string
	Approvals []stepup.Approval
	Next      string
}

func (c *Console) approvals(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	if c.cfg.Approvals == nil {
		return "", &broker.Error{Code: broker.CodeNotFound, Message: "this broker has no approvals"}
	}
	q := r.URL.Query()
	p := approvalsPage{State: q.Get("state")}
	list, next, err := c.cfg.Approvals.ListApprovals(r.Context(), stepup.ApprovalQuery{State: stepup.ApprovalState(p.State), Cursor: q.Get("cursor"), Limit: pageSize})
	if err != nil {
		return "", err
	}
	p.Approvals, p.Next = list, next
	v.Title, v.Data = "Approvals", p
	return "approvals", nil
}

// decide approves or denies one approval, as the signed-in admin.
func (c *Console) decide(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	if c.cfg.Approvals == nil {
		return "", &broker.Error{Code: broker.CodeNotFound, Message: "this broker has no approvals"}
	}
	d := chi.URLParam(r, "decision")
	if d != "approve" && d != "deny" {
		return "", &broker.Error{Code: broker.CodeNotFound, Message: "decide with approve or deny"}
	}
	reason := r.PostForm.Get("reason")
	if len(reason) > 1024 {
		return "", &broker.Error{Code: broker.CodeInvalid, Message: "reason must be at most 1024 characters", Field: "reason"}
	}
	if _, err := c.cfg.Approvals.DecideApproval(r.Context(), v.Who.Actor(), chi.URLParam(r, "id"), d == "approve", reason); err != nil {
		return "", err
	}
	http.Redirect(w, r, "/console/approvals", http.StatusSeeOther)
	return "", nil
}

func (c *Console) auditStatus(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	if c.cfg.Trail == nil {
		return "", &broker.Error{Code: broker.CodeNotFound, Message: "this broker has no audit stream to verify"}
	}
	st, err := c.cfg.Trail.Verify(r.Context())
	if err != nil {
		return "", broker.Unavailable("the audit stream", err)
	}
	type chain struct {
		ID  string
		Seq uint64
	}
	var chains []chain
	for id, seq := range st.Chains {
		chains = append(chains, chain{id, seq})
	}
	slices.SortFunc(chains, func(a, b chain) int { return strings.Compare(a.ID, b.ID) })
	v.Title, v.Data = "Audit chain", struct {
		Status ChainStatus
		Chains []chain
	}{st, chains}
	return "audit", nil
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// pct is how far a job is, 0 to 100.
func pct(j incident.RevocationJob) int {
	if j.State == incident.JobDone {
		return 100
	}
	if j.Matched == 0 {
		return 0
	}
	return min(99, (j.Revoked+j.Failed)*100/j.Matched)
}

func (c *Console) ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := c.now().Sub(t).Round(time.Second)
	if d < 0 {
		return "in " + (-d).String()
	}
	return d.String() + " ago"
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// short is the first n characters of s, for ids in narrow places.
func short(n int, s string) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
