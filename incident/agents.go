package incident

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/inventory"
)

// AgentDetail is one agent of the inventory with what a responder needs:
// its live tasks and the controls in force over it.
type AgentDetail struct {
	Agent     inventory.Agent  `json:"agent"`
	LiveTasks []broker.Task    `json:"live_tasks"`
	Controls  []broker.Control `json:"controls"`
}

// maxAgentTasks bounds the live tasks one agent page shows.
const maxAgentTasks = 200

func (a *Admin) inventory() (inventory.Store, error) {
	if a.agents == nil {
		return nil, &broker.Error{Code: broker.CodeNotFound, Message: "this broker keeps no agent inventory"}
	}
	return a.agents, nil
}

// Agents lists the inventory (see inventory.Query).
func (a *Admin) Agents(ctx context.Context, q inventory.Query) (inventory.Page, error) {
	st, err := a.inventory()
	if err != nil {
		return inventory.Page{}, err
	}
	if err := q.Validate(); err != nil {
		var fe *inventory.FieldError
		if errors.As(err, &fe) {
			return inventory.Page{}, &broker.Error{Code: broker.CodeInvalid, Message: fe.Message, Field: fe.Field}
		}
		return inventory.Page{}, err
	}
	p, err := st.List(ctx, q)
	if err != nil {
		return inventory.Page{}, broker.Unavailable("the agent inventory", err)
	}
	return p, nil
}

// Agent returns one agent with its live tasks and the controls over it.
func (a *Admin) Agent(ctx context.Context, id string) (AgentDetail, error) {
	st, err := a.inventory()
	if err != nil {
		return AgentDetail{}, err
	}
	ag, err := st.Agent(ctx, id)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return AgentDetail{}, broker.Errorf(broker.CodeNotFound, "no agent %q in the inventory", id)
	case err != nil:
		return AgentDetail{}, broker.Unavailable("the agent inventory", err)
	}
	d := AgentDetail{Agent: ag, LiveTasks: []broker.Task{}, Controls: []broker.Control{}}
	sel := Selector{Agent: ag.Subject, Issuer: ag.Issuer}
	for cursor := ""; len(d.LiveTasks) < maxAgentTasks; {
		ids, next, err := a.jobs.Candidates(ctx, sel, cursor, jobBatch)
		if err != nil {
			return AgentDetail{}, broker.Unavailable("the credential ledger", err)
		}
		tasks, _, err := a.jobs.Tasks(ctx, ids)
		if err != nil {
			return AgentDetail{}, broker.Unavailable("the credential ledger", err)
		}
		for _, t := range tasks {
			if t.State == broker.StateActive && sel.Matches(t) && !slices.ContainsFunc(d.LiveTasks, func(x broker.Task) bool { return x.ID == t.ID }) {
				d.LiveTasks = append(d.LiveTasks, t)
			}
		}
		if cursor = next; cursor == "" {
			break
		}
	}
	cs, err := a.controls.List(ctx)
	if err != nil {
		return AgentDetail{}, broker.Unavailable("the control store", err)
	}
	for _, c := range cs {
		if (c.Kind == broker.ControlFreezeAgent && c.Target == ag.Subject && (c.Issuer == "" || c.Issuer == ag.Issuer)) ||
			(c.Kind == broker.ControlDistrustIssuer && c.Target == ag.Issuer) ||
			(c.Kind == broker.ControlQuarantineTemplate && slices.Contains(ag.Templates, c.Target)) {
			d.Controls = append(d.Controls, c)
		}
	}
	return d, nil
}

// resolveLabel fills sel.Agents from the inventory when sel has a label.
func (a *Admin) resolveLabel(ctx context.Context, sel *Selector) error {
	if sel.Label == "" {
		return nil
	}
	key, value, _ := LabelParts(sel.Label)
	st, err := a.inventory()
	if err != nil {
		return err
	}
	sel.Agents = nil
	q := inventory.Query{LabelKey: key, LabelValue: value, Sort: inventory.SortSubject, Limit: inventory.MaxPage}
	for {
		p, err := st.List(ctx, q)
		if err != nil {
			return broker.Unavailable("the agent inventory", err)
		}
		for _, ag := range p.Agents {
			sel.Agents = append(sel.Agents, AgentRef{Issuer: ag.Issuer, Subject: ag.Subject})
		}
		if len(sel.Agents) > MaxLabelAgents {
			return &broker.Error{Code: broker.CodeInvalid, Field: "selector.label",
				Message: fmt.Sprintf("label %s covers more than %d agents; narrow the selector", sel.Label, MaxLabelAgents)}
		}
		if q.Cursor = p.NextCursor; q.Cursor == "" {
			return nil
		}
	}
}

// LabelFreeze is what freezing the agents of a label did, or, in a dry
// run, would do.
type LabelFreeze struct {
	DryRun bool             `json:"dry_run"`
	Label  string           `json:"label"`
	Agents []AgentRef       `json:"agents"`
	Tasks  int              `json:"tasks_matched"`
	Creds  int              `json:"matched"`
	Set    []broker.Control `json:"controls,omitempty"`
	Job    *RevocationJob   `json:"job,omitempty"`
}

// FreezeLabel freezes every agent of the inventory whose label is
// label ("key=value"), each under its own issuer; with revoke, it also
// revokes their live tasks in one job. A dry run changes nothing and
// counts the agents, live tasks and credentials it would hit.
func (a *Admin) FreezeLabel(ctx context.Context, who AdminPrincipal, label, reason string, revoke, dryRun bool) (LabelFreeze, error) {
	sel := Selector{Label: label}
	if err := sel.Validate(); err != nil {
		return LabelFreeze{}, err
	}
	if len(reason) > 1024 || !validName(reason) {
		return LabelFreeze{}, &broker.Error{Code: broker.CodeInvalid, Message: "reason must be at most 1024 printable characters", Field: "reason"}
	}
	if err := a.resolveLabel(ctx, &sel); err != nil {
		return LabelFreeze{}, err
	}
	out := LabelFreeze{DryRun: dryRun, Label: label, Agents: sel.Agents}
	if out.Agents == nil {
		out.Agents = []AgentRef{}
	}
	if dryRun {
		d, err := a.DryRun(ctx, sel)
		if err != nil {
			return LabelFreeze{}, err
		}
		out.Tasks, out.Creds = d.Tasks, d.Matched
		return out, nil
	}
	for _, ag := range sel.Agents {
		c, _, err := a.PutControl(ctx, who, broker.Control{Kind: broker.ControlFreezeAgent, Target: ag.Subject, Issuer: ag.Issuer,
			Reason: reason}, false, true)
		if err != nil {
			return LabelFreeze{}, err
		}
		out.Set = append(out.Set, c)
	}
	if revoke && len(sel.Agents) > 0 {
		j, err := a.Revoke(ctx, who, Selector{Label: label}, "freeze of label "+label+": "+reason)
		if err != nil {
			return out, err
		}
		out.Job, out.Tasks, out.Creds = &j, j.Tasks, j.Matched
	}
	return out, nil
}
