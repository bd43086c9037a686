package stepup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/valet-dev/valet/broker"
)

// Approval requirements: a monitor rule (action require_approval) can make
// an agent's sensitive actions need a human approval for a while, whatever
// their templates say. The requirement lives in Records as a list per
// agent ("<issuer>/<agent>") of entries: a requirement (rule, until) or a
// clearing (cleared_by). A requirement is in force while its until is
// ahead and no clearing came after it. The list lives as long as its
// latest requirement.

// requiredKind is the Records list kind of approval requirements.
const requiredKind = "approval-required"

// maxRequirements bounds one agent's list: a rule fires at most once a
// minute per agent, so it fills only after hours of triggers within the
// life of the latest one. A full list refuses new requirements (Error
// log), and the sensitive actions of that agent keep needing approval
// until its entries expire (clearing it is refused as well).
const maxRequirements = 512

type requirement struct {
	Rule      string    `json:"rule,omitempty"`
	Until     time.Time `json:"until,omitzero"`
	At        time.Time `json:"at"`
	ClearedBy string    `json:"cleared_by,omitempty"`
	Reason    string    `json:"reason,omitempty"`
}

func requiredID(issuer, agent string) string { return issuer + "/" + agent }

// RequireApproval makes every sensitive action of the agent (issuer,
// subject) need a human approval until until, or until an approver
// approves one of them or clears it. rule names the cause (the monitor
// rule); taskID, when set, is the task whose event fired it, so the
// requirement shows in that task's timeline. It is audited as
// approval.required before it returns; an error means it is not in force.
func (s *Service) RequireApproval(ctx context.Context, issuer, agent, rule, taskID string, until time.Time) error {
	store, err := s.recordsStore()
	if err != nil {
		return err
	}
	now := s.now()
	if !until.After(now) {
		return errors.New("stepup: a requirement must end in the future")
	}
	b, _ := json.Marshal(requirement{Rule: rule, Until: until.UTC(), At: now.UTC()}) // plain struct
	lctx, cancel := broker.LedgerCtx(ctx)
	err = store.Append(lctx, requiredKind, requiredID(issuer, agent), b, until, maxRequirements)
	cancel()
	if err != nil {
		return broker.Unavailable("the record store", fmt.Errorf("recording an approval requirement: %w", err))
	}
	ev := broker.Event{Time: now.UTC(), Type: "approval.required", Actor: "monitor", Issuer: issuer, TaskID: taskID, Rule: rule,
		Outcome: "required", Detail: map[string]any{"agent": agent, "until": until.UTC()}}
	if err := s.audit.Record(ctx, ev); err != nil {
		// The requirement stands (it only asks more of the agent); its
		// record is lost.
		return broker.Unavailable("the audit log", err)
	}
	s.log.WarnContext(ctx, "sensitive actions of the agent need approval", "agent", agent, "issuer", issuer, "rule", rule, "until", until)
	return nil
}

// ApprovalRequirement returns the rule whose requirement is in force for
// the agent ("" for none). An unreadable store is an error: the caller
// fails closed.
func (s *Service) ApprovalRequirement(ctx context.Context, issuer, agent string) (string, error) {
	store, err := s.recordsStore()
	if err != nil {
		return "", err
	}
	lctx, cancel := broker.LedgerCtx(ctx)
	items, err := store.Items(lctx, requiredKind, requiredID(issuer, agent), maxRequirements+1)
	cancel()
	if err != nil {
		return "", broker.Unavailable("the record store", fmt.Errorf("reading approval requirements: %w", err))
	}
	now := s.now()
	rule := ""
	for _, b := range items { // oldest first: a clearing ends what came before it
		var r requirement
		if json.Unmarshal(b, &r) != nil {
			return "", &broker.Error{Code: broker.CodeInternal, Message: "internal error", Err: errors.New("an approval requirement is unreadable")}
		}
		switch {
		case r.ClearedBy != "":
			rule = ""
		case now.Before(r.Until):
			rule = r.Rule
		}
	}
	return rule, nil
}

// ClearApprovalRequirement ends the requirements in force for the agent
// (an approver's or an admin's decision), audited as
// approval.requirement_cleared by who.
func (s *Service) ClearApprovalRequirement(ctx context.Context, who, issuer, agent, taskID, reason string) error {
	store, err := s.recordsStore()
	if err != nil {
		return err
	}
	rule, err := s.ApprovalRequirement(ctx, issuer, agent)
	if err != nil {
		return err
	}
	if rule == "" {
		return nil
	}
	now := s.now()
	b, _ := json.Marshal(requirement{At: now.UTC(), ClearedBy: who, Reason: reason}) // plain struct
	lctx, cancel := broker.LedgerCtx(ctx)
	err = store.Append(lctx, requiredKind, requiredID(issuer, agent), b, now.Add(time.Second), maxRequirements)
	cancel()
	if err != nil {
		return broker.Unavailable("the record store", fmt.Errorf("clearing an approval requirement: %w", err))
	}
	ev := broker.Event{Time: now.UTC(), Type: "approval.requirement_cleared", Actor: who, Issuer: issuer, TaskID: taskID,
		Rule: rule, Outcome: "cleared", Reason: reason, Detail: map[string]any{"agent": agent}}
	if err := s.audit.Record(ctx, ev); err != nil {
		s.log.ErrorContext(ctx, "audit write of a cleared approval requirement failed", "agent", agent, "err", err)
	}
	s.log.InfoContext(ctx, "approval requirement cleared", "agent", agent, "issuer", issuer, "by", who)
	return nil
}

// RequirementClear is an approver's request to end an agent's approval
// requirement (POST /v1/approval-requirements/clear).
type RequirementClear struct {
	Issuer string `json:"issuer"`
	Agent  string `json:"agent"`
	Reason string `json:"reason,omitempty"`
}

// Validate refuses a request naming no agent, naming the field.
func (c RequirementClear) Validate() error {
	for _, f := range []struct{ name, v string }{{"issuer", c.Issuer}, {"agent", c.Agent}} {
		if f.v == "" {
			return broker.InvalidField(f.name, "%s is required", f.name)
		}
		if len(f.v) > 256 {
			return broker.InvalidField(f.name, "%s must be at most 256 bytes", f.name)
		}
	}
	if len(c.Reason) > 512 {
		return broker.InvalidField("reason", "reason must be at most 512 bytes")
	}
	return nil
}

// ClearRequirement is an approver's clearing of an agent's requirement:
// it reports whether one was in force (and is now ended).
func (s *Service) ClearRequirement(ctx context.Context, who string, c RequirementClear) (bool, error) {
	if err := c.Validate(); err != nil {
		return false, err
	}
	rule, err := s.ApprovalRequirement(ctx, c.Issuer, c.Agent)
	if err != nil || rule == "" {
		return false, err
	}
	reason := c.Reason
	if reason == "" {
		reason = "cleared by an approver"
	}
	if err := s.ClearApprovalRequirement(ctx, who, c.Issuer, c.Agent, "", broker.Bound(reason, 512)); err != nil {
		return false, err
	}
	return true, nil
}
