package ssf

import (
	"encoding/json"
	"fmt"
	"time"
)

// Event type URIs (CAEP 1.0 section 3, RISC 1.0 section 2, SSF 1.0
// section 8.1.4.1).
const (
	EventSessionRevoked   = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	EventCredentialChange = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
	EventAccountDisabled  = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
	EventAccountEnabled   = "https://schemas.openid.net/secevent/risc/event-type/account-enabled"
	EventVerification     = "https://schemas.openid.net/secevent/ssf/event-type/verification"
	EventStreamUpdated    = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
)

// Delivery method URIs (SSF 1.0 section 6.1.1 and 6.1.2).
const (
	DeliveryPush = "urn:ietf:rfc:8935"
	DeliveryPoll = "urn:ietf:rfc:8936"
)

// SpecVersion is the spec_version of the transmitter metadata (SSF 1.0
// section 7.1).
const SpecVersion = "1_0"

// supportedEvents are the event types Valet transmits, besides
// verification, which is always delivered.
var supportedEvents = []string{EventSessionRevoked, EventCredentialChange, EventAccountDisabled, EventAccountEnabled, EventRiskLevelChange}

// Subject is a Subject Identifier (RFC 9493) or an SSF complex subject
// (SSF 1.0 section 3.2): a JSON object with a "format" member.
type Subject map[string]any

// Opaque is an RFC 9493 section 3.2.4 opaque subject.
func Opaque(id string) Subject { return Subject{"format": "opaque", "id": id} }

// IssSub is an RFC 9493 section 3.2.5 issuer and subject identifier.
func IssSub(iss, sub string) Subject { return Subject{"format": "iss_sub", "iss": iss, "sub": sub} }

// Complex is an SSF 1.0 section 3.2 complex subject of the members given
// (user, session and Valet's credential member; nil members are left out).
func Complex(members map[string]Subject) Subject {
	s := Subject{"format": "complex"}
	for k, v := range members {
		if v != nil {
			s[k] = v
		}
	}
	return s
}

// key is the subject's canonical JSON (object keys sorted), to compare
// subjects.
func (s Subject) key() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Members are the subject itself and, for a complex subject, each of its
// members: the forms a receiver may have named when it removed a subject
// from its stream.
func (s Subject) members() []Subject {
	out := []Subject{s}
	if s["format"] == "complex" {
		for k, v := range s {
			if k == "format" {
				continue
			}
			if m, ok := v.(map[string]any); ok {
				out = append(out, Subject(m))
			} else if m, ok := v.(Subject); ok {
				out = append(out, m)
			}
		}
	}
	return out
}

// maxSubjectBytes bounds a subject a receiver sends.
const maxSubjectBytes = 2048

// validSubject checks a subject a receiver sent (add or remove subject).
func validSubject(raw json.RawMessage) (Subject, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("subject is required")
	}
	if len(raw) > maxSubjectBytes {
		return nil, fmt.Errorf("subject is longer than %d bytes", maxSubjectBytes)
	}
	var s Subject
	if err := json.Unmarshal(raw, &s); err != nil || s == nil {
		return nil, fmt.Errorf("subject must be a JSON object")
	}
	switch s["format"] {
	case "opaque", "iss_sub", "email", "account", "phone_number", "did", "uri", "aliases", "complex":
	default:
		return nil, fmt.Errorf("subject format must be an RFC 9493 format or complex")
	}
	// Round-trip so that the key is canonical whatever the receiver sent.
	b, _ := json.Marshal(s)
	var c Subject
	_ = json.Unmarshal(b, &c)
	return c, nil
}

// Event is one security event before it is addressed to a stream: its type,
// its subject and its payload (event_timestamp is added at signing).
type Event struct {
	Type    string
	Subject Subject
	Payload map[string]any
	At      time.Time
	// Txn is the feed entry the event came from (RFC 8417 txn), or "".
	Txn string
}
