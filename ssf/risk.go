package ssf

import (
	"context"
	"errors"
	"time"

	"github.com/valet-dev/valet/broker"
)

// EventRiskLevelChange is CAEP 1.0 section 3.8: a transmitter's risk
// assessment of a principal changed. Valet sends it when a monitor rule
// marked ssf: true fires.
const EventRiskLevelChange = "https://schemas.openid.net/secevent/caep/event-type/risk-level-change"

// Risk levels of risk-level-change (CAEP 1.0 section 3.8.1).
const (
	RiskLow    = "LOW"
	RiskMedium = "MEDIUM"
	RiskHigh   = "HIGH"
)

// RiskSignal is one firing of a monitor rule, as the transmitter sends it.
type RiskSignal struct {
	// Rule is the monitor rule's name (the template files'), the
	// risk_reason.
	Rule string
	// Level is RiskLow, RiskMedium or RiskHigh.
	Level string
	// Issuer (a name of issuers:) and Agent name the agent; TaskID, when
	// set, the task whose event fired the rule.
	Issuer, Agent, TaskID string
	// Action is what Valet did (the rule's action), for reason_admin.
	Action string
	At     time.Time
}

// RiskLevelChange queues a risk-level-change SET about the agent (a
// complex subject: user = the agent, session = the task when there is one)
// on every stream that requested it. It runs on any broker (not only the
// lease holder): the SETs wait in the streams' queues for push or poll.
func (t *Transmitter) RiskLevelChange(ctx context.Context, r RiskSignal) error {
	switch r.Level {
	case RiskLow, RiskMedium, RiskHigh:
	default:
		return errors.New("ssf: risk level must be LOW, MEDIUM or HIGH")
	}
	var session Subject
	if r.TaskID != "" {
		session = Opaque(r.TaskID)
	}
	principal := "USER"
	subject := t.agentSubject(r.Issuer, r.Agent)
	if session != nil {
		subject = Complex(map[string]Subject{"user": subject, "session": session})
	}
	return t.Publish(ctx, Event{Type: EventRiskLevelChange, Subject: subject, At: r.At,
		Payload: map[string]any{
			"risk_reason": broker.Bound("valet monitor rule "+r.Rule, 256), "principal": principal, "current_level": r.Level,
			"initiating_entity": "policy",
			"reason_admin":      map[string]any{"en": broker.Bound("monitor rule "+r.Rule+" fired; Valet's action: "+r.Action, 256)},
		}})
}
