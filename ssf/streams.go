package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/valet-dev/valet/broker"
)

// Audience is a stream's aud: one string or an array (SSF 1.0 section
// 8.1.1).
type Audience []string

func (a *Audience) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*a = Audience{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("aud must be a string or an array of strings")
	}
	*a = many
	return nil
}

// DeliveryConfig is a stream's delivery member (SSF 1.0 section 8.1.1).
type DeliveryConfig struct {
	Method              string `json:"method"`
	EndpointURL         string `json:"endpoint_url,omitempty"`
	AuthorizationHeader string `json:"authorization_header,omitempty"`
}

// StreamConfig is the stream configuration on the wire (SSF 1.0 section
// 8.1.1). authorization_header is accepted and never returned.
type StreamConfig struct {
	StreamID                string          `json:"stream_id,omitempty"`
	Iss                     string          `json:"iss,omitempty"`
	Aud                     Audience        `json:"aud,omitempty"`
	EventsSupported         []string        `json:"events_supported,omitempty"`
	EventsRequested         []string        `json:"events_requested,omitempty"`
	EventsDelivered         []string        `json:"events_delivered,omitempty"`
	Delivery                *DeliveryConfig `json:"delivery,omitempty"`
	MinVerificationInterval int             `json:"min_verification_interval,omitempty"`
	Description             string          `json:"description,omitempty"`
}

// StreamStatus is a stream's status (SSF 1.0 section 8.1.2).
type StreamStatus struct {
	StreamID string `json:"stream_id"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`
}

// SubjectRequest adds or removes a subject (SSF 1.0 sections 8.1.3.2,
// 8.1.3.3).
type SubjectRequest struct {
	StreamID string          `json:"stream_id"`
	Subject  json.RawMessage `json:"subject"`
	Verified *bool           `json:"verified,omitempty"`
}

// VerifyRequest asks for a verification event (SSF 1.0 section 8.1.4.2).
type VerifyRequest struct {
	StreamID string `json:"stream_id"`
	State    string `json:"state,omitempty"`
}

const (
	maxAudiences    = 8
	maxFieldLen     = 256
	maxAuthHeader   = 1024
	maxExcluded     = 1000
	maxEventsListed = 16
)

func invalid(field, format string, args ...any) error {
	return &broker.Error{Code: broker.CodeInvalid, Message: fmt.Sprintf(format, args...), Field: field}
}

func printable(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) })
}

func (t *Transmitter) wire(s Stream) StreamConfig {
	return StreamConfig{StreamID: s.ID, Iss: t.cfg.Issuer, Aud: s.Audience, EventsSupported: slices.Clone(supportedEvents),
		EventsRequested: s.EventsRequested, EventsDelivered: s.EventsDelivered,
		Delivery:                &DeliveryConfig{Method: s.Method, EndpointURL: s.EndpointURL},
		MinVerificationInterval: int(DefaultMinVerificationInterval / time.Second), Description: s.Description}
}

// apply checks c and writes it over s; replace means fields c leaves out
// are reset.
func (t *Transmitter) apply(s *Stream, c StreamConfig, replace bool) error {
	if c.Aud != nil || replace {
		if len(c.Aud) > maxAudiences {
			return invalid("aud", "aud may name at most %d audiences", maxAudiences)
		}
		for i, a := range c.Aud {
			if a == "" || len(a) > maxFieldLen || !printable(a) {
				return invalid(fmt.Sprintf("aud[%d]", i), "each aud must be 1 to %d printable characters", maxFieldLen)
			}
		}
		s.Audience = slices.Clone(c.Aud)
	}
	if c.EventsRequested != nil || replace {
		if len(c.EventsRequested) > maxEventsListed {
			return invalid("events_requested", "events_requested may list at most %d event types", maxEventsListed)
		}
		for i, e := range c.EventsRequested {
			if len(e) > maxFieldLen || !printable(e) {
				return invalid(fmt.Sprintf("events_requested[%d]", i), "event types must be at most %d printable characters", maxFieldLen)
			}
		}
		s.EventsRequested = slices.Clone(c.EventsRequested)
		s.EventsDelivered = nil
		for _, e := range supportedEvents {
			if slices.Contains(c.EventsRequested, e) {
				s.EventsDelivered = append(s.EventsDelivered, e)
			}
		}
	}
	if c.Description != "" || replace {
		if len(c.Description) > maxFieldLen || !printable(c.Description) {
			return invalid("description", "description must be at most %d printable characters", maxFieldLen)
		}
		s.Description = c.Description
	}
	if c.Delivery == nil {
		if replace || s.Method == "" {
			return invalid("delivery", "delivery is required")
		}
		return nil
	}
	d := *c.Delivery
	if len(d.AuthorizationHeader) > maxAuthHeader || !printable(d.AuthorizationHeader) {
		return invalid("delivery.authorization_header", "authorization_header must be at most %d printable characters", maxAuthHeader)
	}
	switch d.Method {
	case DeliveryPush:
		if err := t.checkPushURL(d.EndpointURL); err != nil {
			return invalid("delivery.endpoint_url", "%s", err.Error())
		}
		s.Method, s.EndpointURL, s.AuthorizationHeader = d.Method, d.EndpointURL, d.AuthorizationHeader
	case DeliveryPoll:
		if d.EndpointURL != "" && d.EndpointURL != t.pollURL(s.ID) {
			return invalid("delivery.endpoint_url", "endpoint_url of a poll stream is Valet's own; leave it out")
		}
		s.Method, s.EndpointURL, s.AuthorizationHeader = d.Method, t.pollURL(s.ID), ""
	default:
		return invalid("delivery.method", "delivery.method must be %s (push) or %s (poll)", DeliveryPush, DeliveryPoll)
	}
	return nil
}

func (t *Transmitter) pollURL(id string) string { return t.cfg.Issuer + "/ssf/poll/" + id }

func unavailable(err error) error {
	if errors.Is(err, broker.ErrNotFound) {
		return broker.Errorf(broker.CodeNotFound, "no such stream")
	}
	return broker.Unavailable("the SSF stream store", err)
}

// CreateStream creates a stream for the admin who (SSF 1.0 section
// 8.1.1.1).
func (t *Transmitter) CreateStream(ctx context.Context, who string, c StreamConfig) (StreamConfig, error) {
	if c.StreamID != "" {
		return StreamConfig{}, invalid("stream_id", "stream_id is assigned by the transmitter; leave it out")
	}
	all, err := t.cfg.Store.Streams(ctx)
	if err != nil {
		return StreamConfig{}, unavailable(err)
	}
	if len(all) >= t.cfg.MaxStreams {
		return StreamConfig{}, &broker.Error{Code: broker.CodeConflict, Rule: "ssf.max_streams",
			Message: fmt.Sprintf("this transmitter already has its maximum of %d streams", t.cfg.MaxStreams)}
	}
	s := Stream{ID: broker.NewID("ssf"), Status: StatusEnabled, CreatedBy: who, CreatedAt: t.now().UTC()}
	if err := t.apply(&s, c, true); err != nil {
		return StreamConfig{}, err
	}
	if len(s.Audience) == 0 {
		s.Audience = []string{s.EndpointURL}
	}
	if err := t.cfg.Store.PutStream(ctx, s); err != nil {
		return StreamConfig{}, unavailable(err)
	}
	t.log.InfoContext(ctx, "ssf stream created", "stream_id", s.ID, "method", s.Method, "by", who)
	return t.wire(s), nil
}

// Stream reads one stream's configuration.
func (t *Transmitter) Stream(ctx context.Context, id string) (StreamConfig, error) {
	s, err := t.stream(ctx, id)
	if err != nil {
		return StreamConfig{}, err
	}
	return t.wire(s), nil
}

func (t *Transmitter) stream(ctx context.Context, id string) (Stream, error) {
	if id == "" || len(id) > maxFieldLen {
		return Stream{}, invalid("stream_id", "stream_id is required")
	}
	s, err := t.cfg.Store.Stream(ctx, id)
	if err != nil {
		return Stream{}, unavailable(err)
	}
	return s, nil
}

// Streams lists every stream's configuration.
func (t *Transmitter) Streams(ctx context.Context) ([]StreamConfig, error) {
	all, err := t.cfg.Store.Streams(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	slices.SortFunc(all, func(a, b Stream) int { return a.CreatedAt.Compare(b.CreatedAt) })
	out := make([]StreamConfig, 0, len(all))
	for _, s := range all {
		out = append(out, t.wire(s))
	}
	return out, nil
}

// UpdateStream changes the fields c sets (PATCH) or, with replace, sets
// the whole configuration (PUT) (SSF 1.0 sections 8.1.1.3, 8.1.1.4).
func (t *Transmitter) UpdateStream(ctx context.Context, c StreamConfig, replace bool) (StreamConfig, error) {
	s, err := t.stream(ctx, c.StreamID)
	if err != nil {
		return StreamConfig{}, err
	}
	if c.Iss != "" && c.Iss != t.cfg.Issuer {
		return StreamConfig{}, invalid("iss", "iss is the transmitter's and cannot change")
	}
	if err := t.apply(&s, c, replace); err != nil {
		return StreamConfig{}, err
	}
	if len(s.Audience) == 0 {
		s.Audience = []string{s.EndpointURL}
	}
	if err := t.cfg.Store.PutStream(ctx, s); err != nil {
		return StreamConfig{}, unavailable(err)
	}
	return t.wire(s), nil
}

// DeleteStream deletes a stream and its queue (SSF 1.0 section 8.1.1.5).
func (t *Transmitter) DeleteStream(ctx context.Context, id string) error {
	if _, err := t.stream(ctx, id); err != nil {
		return err
	}
	if _, err := t.cfg.Store.DeleteStream(ctx, id); err != nil {
		return unavailable(err)
	}
	return nil
}

// Status reads a stream's status (SSF 1.0 section 8.1.2.1).
func (t *Transmitter) Status(ctx context.Context, id string) (StreamStatus, error) {
	s, err := t.stream(ctx, id)
	if err != nil {
		return StreamStatus{}, err
	}
	return StreamStatus{StreamID: s.ID, Status: s.Status, Reason: s.Reason}, nil
}

// SetStatus enables, pauses (events are held) or disables (events are
// not kept) a stream (SSF 1.0 section 8.1.2.2).
func (t *Transmitter) SetStatus(ctx context.Context, st StreamStatus) (StreamStatus, error) {
	switch st.Status {
	case StatusEnabled, StatusPaused, StatusDisabled:
	default:
		return StreamStatus{}, invalid("status", "status must be enabled, paused or disabled")
	}
	if len(st.Reason) > maxFieldLen || !printable(st.Reason) {
		return StreamStatus{}, invalid("reason", "reason must be at most %d printable characters", maxFieldLen)
	}
	s, err := t.stream(ctx, st.StreamID)
	if err != nil {
		return StreamStatus{}, err
	}
	s.Status, s.Reason = st.Status, st.Reason
	if err := t.cfg.Store.PutStream(ctx, s); err != nil {
		return StreamStatus{}, unavailable(err)
	}
	return StreamStatus{StreamID: s.ID, Status: s.Status, Reason: s.Reason}, nil
}

// AddSubject includes a subject in a stream again (SSF 1.0 section
// 8.1.3.2). Valet's default_subjects is ALL, so this lifts an earlier
// removal.
func (t *Transmitter) AddSubject(ctx context.Context, r SubjectRequest) error {
	sub, err := validSubject(r.Subject)
	if err != nil {
		return invalid("subject", "%s", err.Error())
	}
	s, err := t.stream(ctx, r.StreamID)
	if err != nil {
		return err
	}
	s.Excluded = slices.DeleteFunc(s.Excluded, func(k string) bool { return k == sub.key() })
	if err := t.cfg.Store.PutStream(ctx, s); err != nil {
		return unavailable(err)
	}
	return nil
}

// RemoveSubject stops a stream's events about a subject (SSF 1.0 section
// 8.1.3.3); it matches an event's whole subject or any member of a
// complex one.
func (t *Transmitter) RemoveSubject(ctx context.Context, r SubjectRequest) error {
	sub, err := validSubject(r.Subject)
	if err != nil {
		return invalid("subject", "%s", err.Error())
	}
	s, err := t.stream(ctx, r.StreamID)
	if err != nil {
		return err
	}
	if k := sub.key(); !slices.Contains(s.Excluded, k) {
		if len(s.Excluded) >= maxExcluded {
			return &broker.Error{Code: broker.CodeConflict, Rule: "ssf.max_removed_subjects",
				Message: fmt.Sprintf("a stream may have at most %d removed subjects", maxExcluded)}
		}
		s.Excluded = append(s.Excluded, k)
	}
	if err := t.cfg.Store.PutStream(ctx, s); err != nil {
		return unavailable(err)
	}
	return nil
}

// Verify queues a verification event carrying state on the stream (SSF
// 1.0 section 8.1.4.2), at most once per DefaultMinVerificationInterval.
func (t *Transmitter) Verify(ctx context.Context, r VerifyRequest) error {
	if len(r.State) > maxFieldLen || !printable(r.State) {
		return invalid("state", "state must be at most %d printable characters", maxFieldLen)
	}
	s, err := t.stream(ctx, r.StreamID)
	if err != nil {
		return err
	}
	now := t.now()
	if !s.VerifiedAt.IsZero() && now.Sub(s.VerifiedAt) < DefaultMinVerificationInterval {
		return &broker.Error{Code: broker.CodeTooManyRequests, Rule: "ssf.min_verification_interval",
			Message:    fmt.Sprintf("verification may be requested once every %s", DefaultMinVerificationInterval),
			RetryAfter: DefaultMinVerificationInterval - now.Sub(s.VerifiedAt)}
	}
	s.VerifiedAt = now
	if err := t.cfg.Store.PutStream(ctx, s); err != nil {
		return unavailable(err)
	}
	p := map[string]any{}
	if r.State != "" {
		p["state"] = r.State
	}
	if err := t.enqueue(ctx, s, Event{Type: EventVerification, Subject: Opaque(s.ID), Payload: p}); err != nil {
		return unavailable(err)
	}
	return nil
}

// PollRequest is an RFC 8936 section 2.4 poll.
type PollRequest struct {
	MaxEvents         *int                       `json:"maxEvents,omitempty"`
	ReturnImmediately bool                       `json:"returnImmediately,omitempty"`
	Ack               []string                   `json:"ack,omitempty"`
	SetErrs           map[string]SetErrorDetails `json:"setErrs,omitempty"`
}

// SetErrorDetails is a receiver's error about one SET (RFC 8936 section
// 2.4).
type SetErrorDetails struct {
	Err         string `json:"err"`
	Description string `json:"description,omitempty"`
}

// PollResponse is an RFC 8936 section 2.5 answer.
type PollResponse struct {
	Sets          map[string]string `json:"sets"`
	MoreAvailable bool              `json:"moreAvailable,omitempty"`
}

const (
	maxPollEvents = 100
	maxPollAcks   = 1000
)

// Poll acknowledges the SETs the receiver names, then returns up to
// maxEvents queued SETs (RFC 8936). Unacknowledged SETs are returned again
// on the next poll. Without returnImmediately it waits up to two seconds
// for a SET.
func (t *Transmitter) Poll(ctx context.Context, id string, r PollRequest) (PollResponse, error) {
	if len(r.Ack)+len(r.SetErrs) > maxPollAcks {
		return PollResponse{}, invalid("ack", "at most %d acks and setErrs per poll", maxPollAcks)
	}
	s, err := t.stream(ctx, id)
	if err != nil {
		return PollResponse{}, err
	}
	if s.Method != DeliveryPoll {
		return PollResponse{}, &broker.Error{Code: broker.CodeConflict, Message: "this stream is delivered by push, not poll"}
	}
	acks := slices.Clone(r.Ack)
	for jti, e := range r.SetErrs {
		acks = append(acks, jti)
		t.sets.WithLabelValues(ResultRejected).Inc()
		t.log.WarnContext(ctx, "ssf poll: receiver reported a SET error", "stream_id", s.ID,
			"jti", boundPrintable(jti, 64), "err", boundPrintable(e.Err+": "+e.Description, 256))
	}
	if len(acks) > 0 {
		n, err := t.cfg.Store.Ack(ctx, s.ID, acks)
		if err != nil {
			return PollResponse{}, unavailable(err)
		}
		t.sets.WithLabelValues(ResultAcked).Add(float64(n - len(r.SetErrs)))
	}
	limit := maxPollEvents
	if r.MaxEvents != nil {
		if *r.MaxEvents < 0 {
			return PollResponse{}, invalid("maxEvents", "maxEvents must not be negative")
		}
		limit = min(*r.MaxEvents, maxPollEvents)
	}
	resp := PollResponse{Sets: map[string]string{}}
	if limit == 0 || s.Status != StatusEnabled {
		return resp, nil
	}
	deadline := time.Now().Add(maxPollWait)
	for {
		pending, err := t.cfg.Store.Pending(ctx, s.ID, limit+1)
		if err != nil {
			return PollResponse{}, unavailable(err)
		}
		if len(pending) > limit {
			pending, resp.MoreAvailable = pending[:limit], true
		}
		for _, q := range pending {
			resp.Sets[q.JTI] = q.SET
		}
		if len(resp.Sets) > 0 || r.ReturnImmediately || time.Now().After(deadline) {
			return resp, nil
		}
		sleep(ctx, 100*time.Millisecond)
		if ctx.Err() != nil {
			return resp, nil
		}
	}
}
