package incident

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/valet-dev/valet/broker"
)

// Controls lists the controls in force.
func (a *Admin) Controls(ctx context.Context) ([]broker.Control, error) {
	cs, err := a.controls.List(ctx)
	if err != nil {
		return nil, broker.Unavailable("the control store", err)
	}
	return cs, nil
}

// PutControl sets a control; with revoke, it also revokes the live tasks
// the control covers and returns that job. A target Valet does not know
// (no such template, no such configured issuer, an agent with no task in
// the ledger) is refused unless force. Setting a control again without a
// reason keeps the reason it had.
func (a *Admin) PutControl(ctx context.Context, who AdminPrincipal, c broker.Control, revoke, force bool) (broker.Control, *RevocationJob, error) {
	if err := ValidateControl(c); err != nil {
		return broker.Control{}, nil, err
	}
	if !validName(c.Target) || !validName(c.Issuer) || !validName(c.Reason) {
		return broker.Control{}, nil, &broker.Error{Code: broker.CodeInvalid, Message: "target, issuer and reason must be printable", Field: "target"}
	}
	if !force {
		if err := a.knownTarget(ctx, c); err != nil {
			return broker.Control{}, nil, err
		}
	}
	if c.Reason == "" {
		cs, err := a.controls.List(ctx)
		if err != nil {
			return broker.Control{}, nil, broker.Unavailable("the control store", err)
		}
		for _, old := range cs {
			if old.ID() == c.ID() {
				c.Reason = old.Reason
			}
		}
	}
	c.By, c.At = who.Actor(), a.now().UTC()
	ev := a.core.TaskEvent(ctx, "control.set", who.Actor(), broker.Task{})
	ev.Reason = c.Reason
	ev.Detail = map[string]any{"control": c.ID(), "kind": c.Kind, "target": c.Target, "issuer": c.Issuer, "revoke": revoke}
	if err := a.audit.Record(ctx, ev); err != nil {
		return broker.Control{}, nil, broker.Unavailable("the audit log", err)
	}
	if err := a.controls.Put(ctx, c); err != nil {
		return broker.Control{}, nil, broker.Unavailable("the control store", err)
	}
	if !revoke {
		return c, nil, nil
	}
	var sel Selector
	switch c.Kind {
	case broker.ControlFreezeAgent:
		sel = Selector{Agent: c.Target, Issuer: c.Issuer}
	case broker.ControlQuarantineTemplate:
		sel = Selector{Template: c.Target}
	case broker.ControlDistrustIssuer:
		sel = Selector{Issuer: c.Target}
	}
	j, err := a.Revoke(ctx, who, sel, "control "+c.ID()+": "+c.Reason)
	if err != nil {
		return c, nil, err
	}
	return c, &j, nil
}

// knownTarget refuses a control over a name Valet does not know, which is
// most often a typo that would otherwise look like a control in force.
func (a *Admin) knownTarget(ctx context.Context, c broker.Control) error {
	unknown := func(format string, args ...any) error {
		return &broker.Error{Code: broker.CodeNotFound, Message: fmt.Sprintf(format, args...) + " (set force to set the control anyway)", Field: "target"}
	}
	if c.Issuer != "" && !slices.Contains(a.issuers, c.Issuer) {
		return unknown("no agent issuer is named %q", c.Issuer)
	}
	switch c.Kind {
	case broker.ControlQuarantineTemplate:
		if _, ok := a.core.Templates().Get(c.Target); !ok {
			return unknown("no template is named %q", c.Target)
		}
	case broker.ControlDistrustIssuer:
		if !slices.Contains(a.issuers, c.Target) {
			return unknown("no agent issuer is named %q", c.Target)
		}
	case broker.ControlFreezeAgent:
		ids, _, err := a.jobs.Candidates(ctx, Selector{Agent: c.Target, Issuer: c.Issuer}, "", 1)
		if err != nil {
			return broker.Unavailable("the credential ledger", err)
		}
		if len(ids) == 0 {
			return unknown("agent %q has no task in the ledger", c.Target)
		}
	}
	return nil
}

// DeleteControl lifts a control (reinstate).
func (a *Admin) DeleteControl(ctx context.Context, who AdminPrincipal, c broker.Control) error {
	ev := a.core.TaskEvent(ctx, "control.lifted", who.Actor(), broker.Task{})
	ev.Detail = map[string]any{"control": c.ID()}
	if err := a.audit.Record(ctx, ev); err != nil {
		return broker.Unavailable("the audit log", err)
	}
	ok, err := a.controls.Delete(ctx, c)
	if err != nil {
		return broker.Unavailable("the control store", err)
	}
	if !ok {
		return broker.Errorf(broker.CodeNotFound, "no control %s", c.ID())
	}
	return nil
}

// ValidateControl checks a control as a responder asks for it (to put or
// to lift).
func ValidateControl(c broker.Control) error {
	switch c.Kind {
	case broker.ControlFreezeAgent, broker.ControlQuarantineTemplate, broker.ControlDistrustIssuer:
	default:
		return &broker.Error{Code: broker.CodeInvalid, Message: fmt.Sprintf("kind %q must be freeze_agent, quarantine_template or distrust_issuer", c.Kind), Field: "kind"}
	}
	if c.Target == "" || len(c.Target) > 256 {
		return &broker.Error{Code: broker.CodeInvalid, Message: "target must be 1 to 256 characters", Field: "target"}
	}
	if c.Issuer != "" && c.Kind != broker.ControlFreezeAgent {
		return &broker.Error{Code: broker.CodeInvalid, Message: "issuer narrows only a freeze_agent control", Field: "issuer"}
	}
	if len(c.Reason) > 1024 {
		return &broker.Error{Code: broker.CodeInvalid, Message: "reason is longer than 1024 characters", Field: "reason"}
	}
	return nil
}

// validName is what may go into a control or selector from outside: no
// control characters.
func validName(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}
