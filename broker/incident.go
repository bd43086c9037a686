package broker

import (
	"context"
	"time"

	"github.com/valet-dev/valet/policy"
)

// This file holds what the gate and the feed need of incident response:
// revoked-before epochs, controls (freeze, quarantine, distrust), the
// revocation feed, and the stores they need. The admin side that drives
// them, with its bulk revocation jobs, is package incident.

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
