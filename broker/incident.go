package broker

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/valet-dev/valet/policy"
)

// This file holds the incident-response domain: revoked-before epochs,
// controls (freeze, quarantine, distrust), bulk revocation jobs and the
// revocation feed, and the small stores they need. The admin side that
// drives them is package incident.

// EpochTTL is how long an epoch is kept: the longest life any task (and so
// any credential) can have, so an epoch outlives every token it covers.
const EpochTTL = policy.MaxTTL

// Dimension is what a revoked-before epoch covers.
type Dimension string

const (
	DimAgent    Dimension = "agent"    // key "<issuer>/<subject>"
	DimTemplate Dimension = "template" // key: the template name
	DimIssuer   Dimension = "issuer"   // key: the configured issuer name
)

// Epoch says: every credential of Key in Dimension issued at or before
// Before is revoked. Setting one is O(1) however many credentials it covers.
type Epoch struct {
	Dimension Dimension `json:"dimension"`
	Key       string    `json:"key"`
	Before    time.Time `json:"before"`
}

// AgentKey is the epoch key of one agent.
func AgentKey(issuer, subject string) string { return issuer + "/" + subject }

// epochsOf are the three epochs that can cover a credential of this agent,
// issuer and template.
func epochsOf(issuer, subject, template string) []Epoch {
	return []Epoch{
		{Dimension: DimAgent, Key: AgentKey(issuer, subject)},
		{Dimension: DimTemplate, Key: template},
		{Dimension: DimIssuer, Key: issuer},
	}
}

// EpochStore keeps epochs beside the ledger. Implementations must be safe
// for concurrent use; errors wrap ErrNotFound or ErrUnavailable where those
// apply.
type EpochStore interface {
	// CredentialStatus is Ledger.Credential plus the latest Before of the
	// given epochs and of any global epoch the store keeps (zero if none is
	// set), all in one round trip.
	CredentialStatus(ctx context.Context, id string, epochs []Epoch) (Credential, bool, time.Time, error)
	// SetEpoch moves an epoch forward (never back) and publishes it on the
	// revocation feed, atomically.
	SetEpoch(ctx context.Context, e Epoch) error
	// Deny puts one credential the ledger has no record of on the deny list
	// until exp and announces it on the feed (a revocation of a token whose
	// records were lost with Redis's data).
	Deny(ctx context.Context, jti, taskID string, exp time.Time) error
}

// ControlKind is a standing order against new declarations.
type ControlKind string

const (
	ControlFreezeAgent        ControlKind = "freeze_agent"
	ControlQuarantineTemplate ControlKind = "quarantine_template"
	ControlDistrustIssuer     ControlKind = "distrust_issuer"
)

// Rule is the name a denial by this control carries (Error.Rule).
func (k ControlKind) Rule() string {
	switch k {
	case ControlFreezeAgent:
		return "frozen-agent"
	case ControlQuarantineTemplate:
		return "quarantined-template"
	case ControlDistrustIssuer:
		return "distrusted-issuer"
	}
	return string(k)
}

// Control is one standing order. Target is the agent (subject), template
// or issuer name; Issuer narrows a freeze to one issuer's agent (empty:
// that subject from every issuer).
type Control struct {
	Kind   ControlKind `json:"kind"`
	Target string      `json:"target"`
	Issuer string      `json:"issuer,omitempty"`
	Reason string      `json:"reason"`
	By     string      `json:"by"`
	At     time.Time   `json:"at"`
}

// ID is the control's stable name: one control per kind, target and issuer.
func (c Control) ID() string { return string(c.Kind) + ":" + c.Issuer + ":" + c.Target }

// Validate checks a control as a responder asks for it.
func (c Control) Validate() error {
	switch c.Kind {
	case ControlFreezeAgent, ControlQuarantineTemplate, ControlDistrustIssuer:
	default:
		return &Error{Code: CodeInvalid, Message: fmt.Sprintf("kind %q must be freeze_agent, quarantine_template or distrust_issuer", c.Kind), Field: "kind"}
	}
	if c.Target == "" || len(c.Target) > 256 {
		return &Error{Code: CodeInvalid, Message: "target must be 1 to 256 characters", Field: "target"}
	}
	if c.Issuer != "" && c.Kind != ControlFreezeAgent {
		return &Error{Code: CodeInvalid, Message: "issuer narrows only a freeze_agent control", Field: "issuer"}
	}
	if len(c.Reason) > 1024 {
		return &Error{Code: CodeInvalid, Message: "reason is longer than 1024 characters", Field: "reason"}
	}
	return nil
}

// Matches reports whether c stops a declaration by this agent for this
// template.
func (c Control) Matches(issuer, subject, template string) bool {
	switch c.Kind {
	case ControlFreezeAgent:
		return c.Target == subject && (c.Issuer == "" || c.Issuer == issuer)
	case ControlQuarantineTemplate:
		return c.Target == template
	case ControlDistrustIssuer:
		return c.Target == issuer
	}
	return false
}

// ControlStore keeps controls. Implementations must be safe for concurrent
// use. Check is on the declaration path: it answers from a cache kept fresh
// across replicas, and errors (wrapping ErrUnavailable) when it cannot be
// sure of the current controls, so that declarations fail closed.
type ControlStore interface {
	Check(ctx context.Context, issuer, subject, template string) (*Control, error)
	List(ctx context.Context) ([]Control, error)
	Put(ctx context.Context, c Control) error
	// Delete removes a control and reports whether there was one.
	Delete(ctx context.Context, c Control) (bool, error)
}

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
}

// Validate reports the first problem of a selector.
func (s Selector) Validate() error {
	if s.Agent == "" && s.Issuer == "" && s.Template == "" && s.Tool == "" && s.TaskID == "" {
		return &Error{Code: CodeInvalid, Message: "the selector must name at least one of agent, issuer, template, tool and task_id", Field: "selector"}
	}
	for _, f := range []struct{ name, v string }{{"agent", s.Agent}, {"issuer", s.Issuer}, {"template", s.Template}, {"tool", s.Tool}, {"task_id", s.TaskID}} {
		if len(f.v) > 256 {
			return &Error{Code: CodeInvalid, Message: f.name + " is longer than 256 characters", Field: "selector." + f.name}
		}
	}
	if !s.IssuedBefore.IsZero() && !s.IssuedAfter.IsZero() && !s.IssuedAfter.Before(s.IssuedBefore) {
		return &Error{Code: CodeInvalid, Message: "issued_after must be before issued_before", Field: "selector.issued_after"}
	}
	return nil
}

// Matches reports whether a task is covered by the selector: the same
// tasks the selector's epochs cover. An agent (with or without its issuer)
// matches any principal of the task's Links (root agent, every sub-agent,
// the user it acts for); an issuer alone matches any of their issuers.
func (s Selector) Matches(t Task) bool {
	links := t.Links()
	agent := s.Agent == "" || slices.ContainsFunc(links, func(l Link) bool {
		return l.Agent == s.Agent && (s.Issuer == "" || l.Issuer == s.Issuer)
	})
	issuer := s.Issuer == "" || s.Agent != "" || slices.ContainsFunc(links, func(l Link) bool { return l.Issuer == s.Issuer })
	switch {
	case !agent, !issuer,
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
func (s Selector) Epochs(issuers []string, at time.Time) []Epoch {
	if s.Tool != "" || s.TaskID != "" || !s.IssuedAfter.IsZero() {
		return nil
	}
	before := at
	if !s.IssuedBefore.IsZero() && s.IssuedBefore.Before(at) {
		before = s.IssuedBefore
	}
	switch {
	case s.Agent != "" && s.Template == "":
		if s.Issuer != "" {
			return []Epoch{{Dimension: DimAgent, Key: AgentKey(s.Issuer, s.Agent), Before: before}}
		}
		out := make([]Epoch, 0, len(issuers))
		for _, is := range issuers {
			out = append(out, Epoch{Dimension: DimAgent, Key: AgentKey(is, s.Agent), Before: before})
		}
		return out
	case s.Template != "" && s.Agent == "" && s.Issuer == "":
		return []Epoch{{Dimension: DimTemplate, Key: s.Template, Before: before}}
	case s.Issuer != "" && s.Agent == "" && s.Template == "":
		return []Epoch{{Dimension: DimIssuer, Key: s.Issuer, Before: before}}
	}
	return nil
}

// JobState is where a bulk revocation job is.
type JobState string

const (
	JobRunning JobState = "running"
	JobDone    JobState = "done"
)

// RevocationJob is a bulk revocation: its selector, its progress and where
// to resume. Counts are of credentials unless named for tasks.
type RevocationJob struct {
	ID       string    `json:"id"`
	State    JobState  `json:"state"`
	Selector Selector  `json:"selector"`
	By       string    `json:"by"`
	Reason   string    `json:"reason,omitempty"`
	Created  time.Time `json:"created_at"`
	Finished time.Time `json:"finished_at,omitzero"`
	// Epochs are the revoked-before epochs the job set when it started:
	// everything they cover was inactive at introspection from Created on.
	Epochs  []Epoch `json:"epochs,omitempty"`
	Tasks   int     `json:"tasks_matched"`
	Matched int     `json:"matched"`
	Revoked int     `json:"revoked"`
	Failed  int     `json:"failed"`
	Pending int     `json:"pending"`
	// Cursor is the job's place in its enumeration, opaque to the domain.
	Cursor string `json:"cursor,omitempty"`
	// LastError is the last error that interrupted the job (it is retried).
	LastError string `json:"last_error,omitempty"`
}

// JobStore keeps revocation jobs and enumerates the tasks they cover.
// Implementations must be safe for concurrent use by several brokers.
type JobStore interface {
	SaveJob(ctx context.Context, j RevocationJob) error
	Job(ctx context.Context, id string) (RevocationJob, error)
	// Unfinished lists the ids of jobs still running (to resume on start).
	Unfinished(ctx context.Context) ([]string, error)
	// Lease takes or renews the right to run job id for ttl; false means
	// another broker holds it.
	Lease(ctx context.Context, id, owner string, ttl time.Duration) (bool, error)
	// Candidates returns up to about limit ids of tasks that may match sel
	// (a superset: the caller filters), starting at cursor ("" is the
	// start), and the cursor of the next batch ("" when there is none).
	Candidates(ctx context.Context, sel Selector, cursor string, limit int) ([]string, string, error)
	// Tasks reads many tasks and their credentials in one round trip;
	// tasks that no longer exist are left out.
	Tasks(ctx context.Context, ids []string) ([]Task, [][]Credential, error)
}

// FeedEntry is one revocation as the feed carries it: a credential (JTI,
// TaskID, Exp), an epoch, or a control put (ControlActive) or lifted.
type FeedEntry struct {
	Cursor        string
	JTI           string
	TaskID        string
	Exp           time.Time
	Epoch         *Epoch
	Control       *Control
	ControlActive bool
}

// Feed is the revocation feed tool servers follow. Implementations must be
// safe for concurrent use.
type Feed interface {
	// Snapshot lists what is revoked and not yet expired at now, and the
	// cursor to follow from.
	Snapshot(ctx context.Context, now time.Time) ([]FeedEntry, string, error)
	// Follow waits up to wait for entries after cursor ("" means from now)
	// and returns them with the cursor to continue from.
	Follow(ctx context.Context, cursor string, wait time.Duration) ([]FeedEntry, string, error)
}

// TimelineReader reads one task's audit events in order.
type TimelineReader interface {
	Timeline(ctx context.Context, taskID string) ([]Event, error)
}

// checkControls is Declare's use of the gate: the declaring agent and the
// user it acts for, under the template it names. A refusal is audited as a
// denied declaration.
func (s *Service) checkControls(ctx context.Context, p Principal, d Declaration) error {
	links := []Link{{Agent: p.Subject, Issuer: p.Issuer}}
	if d.User != nil {
		links = append(links, Link{Agent: d.User.Subject, Issuer: d.User.Issuer})
	}
	err := s.gate(ctx, standing{links: links, template: d.Template})
	if err != nil && ErrorCode(err) == CodeForbidden {
		s.recordDenial(ctx, p, d, err)
	}
	return err
}

// validName is what may go into a control or selector from outside: no
// control characters.
func validName(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}
