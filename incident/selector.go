package incident

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/valet-dev/valet/broker"
)

// Selector picks the tasks (and so the credentials) a bulk revocation
// covers. Every field set must match; at least one must be set.
type Selector struct {
	Agent        string    `json:"agent,omitempty"`
	Issuer       string    `json:"issuer,omitempty"`
	Template     string    `json:"template,omitempty"`
	Tool         string    `json:"tool,omitempty"`
	TaskID       string    `json:"task_id,omitempty"`
	IssuedBefore time.Time `json:"issued_before,omitzero"`
	IssuedAfter  time.Time `json:"issued_after,omitzero"`
	// Label ("key=value") picks the agents of the inventory with that owner
	// label; Revoke and DryRun resolve it into Agents when they start, so
	// a job keeps the agents it began with.
	Label  string     `json:"label,omitempty"`
	Agents []AgentRef `json:"agents,omitempty"`
}

// AgentRef names one agent: its issuer and subject.
type AgentRef struct {
	Issuer  string `json:"issuer"`
	Subject string `json:"subject"`
}

// MaxLabelAgents bounds how many agents one label selector may resolve to.
const MaxLabelAgents = 1000

// LabelParts splits a "key=value" label selector.
func LabelParts(label string) (key, value string, ok bool) {
	key, value, ok = strings.Cut(label, "=")
	return key, value, ok && key != "" && value != ""
}

// Validate reports the first problem of a selector.
func (s Selector) Validate() error {
	if s.Agent == "" && s.Issuer == "" && s.Template == "" && s.Tool == "" && s.TaskID == "" && s.Label == "" {
		return &broker.Error{Code: broker.CodeInvalid, Message: "the selector must name at least one of agent, issuer, template, tool, task_id and label", Field: "selector"}
	}
	for _, f := range []struct{ name, v string }{{"agent", s.Agent}, {"issuer", s.Issuer}, {"template", s.Template}, {"tool", s.Tool}, {"task_id", s.TaskID}, {"label", s.Label}} {
		if len(f.v) > 256 {
			return &broker.Error{Code: broker.CodeInvalid, Message: f.name + " is longer than 256 characters", Field: "selector." + f.name}
		}
		if !validName(f.v) {
			return &broker.Error{Code: broker.CodeInvalid, Message: f.name + " holds a control character", Field: "selector." + f.name}
		}
	}
	if _, _, ok := LabelParts(s.Label); s.Label != "" && !ok {
		return &broker.Error{Code: broker.CodeInvalid, Message: "label must be key=value", Field: "selector.label"}
	}
	if len(s.Agents) > MaxLabelAgents {
		return &broker.Error{Code: broker.CodeInvalid, Message: fmt.Sprintf("agents lists more than %d agents", MaxLabelAgents), Field: "selector.agents"}
	}
	if len(s.Agents) > 0 && s.Label == "" {
		return &broker.Error{Code: broker.CodeInvalid, Message: "agents is filled from label by the broker; send label instead", Field: "selector.agents"}
	}
	if !s.IssuedBefore.IsZero() && !s.IssuedAfter.IsZero() && !s.IssuedAfter.Before(s.IssuedBefore) {
		return &broker.Error{Code: broker.CodeInvalid, Message: "issued_after must be before issued_before", Field: "selector.issued_after"}
	}
	return nil
}

// Matches reports whether a task is covered by the selector: the same
// tasks the selector's epochs cover. An agent (with or without its issuer)
// matches any principal of the task's Links (root agent, every sub-agent,
// the user it acts for); an issuer alone matches any of their issuers.
func (s Selector) Matches(t broker.Task) bool {
	links := t.Links()
	agent := s.Agent == "" || slices.ContainsFunc(links, func(l broker.Link) bool {
		return l.Agent == s.Agent && (s.Issuer == "" || l.Issuer == s.Issuer)
	})
	issuer := s.Issuer == "" || s.Agent != "" || slices.ContainsFunc(links, func(l broker.Link) bool { return l.Issuer == s.Issuer })
	labelled := s.Label == "" || slices.ContainsFunc(links, func(l broker.Link) bool {
		return slices.Contains(s.Agents, AgentRef{Issuer: l.Issuer, Subject: l.Agent})
	})
	switch {
	case !agent, !issuer, !labelled,
		s.Template != "" && t.Template != s.Template,
		s.TaskID != "" && t.ID != s.TaskID,
		s.Tool != "" && !slices.Contains(t.Tools, s.Tool),
		!s.IssuedBefore.IsZero() && t.CreatedAt.After(s.IssuedBefore),
		!s.IssuedAfter.IsZero() && !t.CreatedAt.After(s.IssuedAfter):
		return false
	}
	return true
}

// Epochs returns the epochs that cover exactly this selector, or nil when
// it is not a pure per-dimension cut (a tool, a task id, an issued_after or
// two dimensions at once need the job to pick tasks one by one). issuers
// lists every trusted issuer, for an agent named without one.
func (s Selector) Epochs(issuers []string, at time.Time) []broker.Epoch {
	if s.Tool != "" || s.TaskID != "" || !s.IssuedAfter.IsZero() {
		return nil
	}
	before := at
	if !s.IssuedBefore.IsZero() && s.IssuedBefore.Before(at) {
		before = s.IssuedBefore
	}
	if s.Label != "" {
		// A label alone is the cut of its agents; with another dimension it
		// is narrower than any epoch.
		if s.Agent != "" || s.Issuer != "" || s.Template != "" {
			return nil
		}
		out := make([]broker.Epoch, 0, len(s.Agents))
		for _, a := range s.Agents {
			out = append(out, broker.Epoch{Dimension: broker.DimAgent, Key: broker.AgentKey(a.Issuer, a.Subject), Before: before})
		}
		return out
	}
	switch {
	case s.Agent != "" && s.Template == "":
		if s.Issuer != "" {
			return []broker.Epoch{{Dimension: broker.DimAgent, Key: broker.AgentKey(s.Issuer, s.Agent), Before: before}}
		}
		out := make([]broker.Epoch, 0, len(issuers))
		for _, is := range issuers {
			out = append(out, broker.Epoch{Dimension: broker.DimAgent, Key: broker.AgentKey(is, s.Agent), Before: before})
		}
		return out
	case s.Template != "" && s.Agent == "" && s.Issuer == "":
		return []broker.Epoch{{Dimension: broker.DimTemplate, Key: s.Template, Before: before}}
	case s.Issuer != "" && s.Agent == "" && s.Template == "":
		return []broker.Epoch{{Dimension: broker.DimIssuer, Key: s.Issuer, Before: before}}
	}
	return nil
}
