package ssf

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/fanout"
)

// SETSigner signs Security Event Tokens with Valet's keys
// (issuers.JWT.SignSET). Safe for concurrent use.
type SETSigner interface {
	SignSET(claims map[string]any) (string, error)
}

// TaskReader reads a task for the subjects of its events (broker.Ledger).
type TaskReader interface {
	Task(ctx context.Context, id string) (broker.Task, []broker.Credential, error)
}

// Defaults of TransmitterConfig.
const (
	DefaultQueueSize   = 1000
	DefaultMaxStreams  = 20
	DefaultMaxAttempts = 8
	DefaultRetryBase   = time.Second
	DefaultRetryMax    = 5 * time.Minute
	// DefaultMinVerificationInterval is the least time between two
	// verification requests of one stream.
	DefaultMinVerificationInterval = 10 * time.Second
	pushTimeout                    = 5 * time.Second
	maxPushResponseBytes           = 64 << 10
	leaseTTL                       = 15 * time.Second
	tick                           = time.Second
	pushBatch                      = 50
	maxPollWait                    = 2 * time.Second
	feedCaller                     = "ssf-transmitter"
)

// TransmitterConfig configures a Transmitter.
type TransmitterConfig struct {
	// Issuer is Valet's public URL: the iss of every SET and the base of
	// the endpoints in the metadata.
	Issuer string
	Signer SETSigner
	Store  Store
	// Feed is the revocation feed's fan-out the transmitter follows.
	Feed *fanout.Hub
	// Tasks names the agent of a task's events; nil leaves only the task
	// and credential in their subjects.
	Tasks TaskReader
	// IssuerURLs maps the configured names of trusted issuers to their
	// issuer URLs, for iss_sub subjects of agents.
	IssuerURLs map[string]string
	// PushHosts are the hosts (host or host:port) push endpoints may name.
	PushHosts []string
	// QueueSize bounds each stream's queue; MaxStreams the streams.
	QueueSize  int
	MaxStreams int
	// MaxAttempts, RetryBase and RetryMax shape push retries: exponential
	// backoff with ±50% jitter, then the SET is dropped and counted.
	MaxAttempts int
	RetryBase   time.Duration
	RetryMax    time.Duration
	// HTTPClient pushes SETs (default: 5 s timeout, no redirects).
	HTTPClient *http.Client
	// Registerer, when set, gets valet_ssf_sets_total.
	Registerer prometheus.Registerer
	// Owner names this broker for the transmitter lease.
	Owner  string
	Logger *slog.Logger
	Now    func() time.Time
}

// Transmitter is Valet's SSF transmitter. Safe for concurrent use.
type Transmitter struct {
	cfg   TransmitterConfig
	hosts map[string]bool
	sets  *prometheus.CounterVec
	log   *slog.Logger
	now   func() time.Time

	mu    sync.Mutex
	ended map[string]time.Time // tasks whose session-revoked was emitted, for dedupe
}

// SET results counted by valet_ssf_sets_total.
const (
	ResultQueued    = "queued"
	ResultDelivered = "delivered"
	ResultRetried   = "retried"
	ResultRejected  = "rejected"
	ResultDropped   = "dropped"
	ResultQueueFull = "queue_full"
	ResultAcked     = "acked"
)

// NewTransmitter checks cfg and builds the transmitter.
func NewTransmitter(cfg TransmitterConfig) (*Transmitter, error) {
	var errs []error
	if !strings.HasPrefix(cfg.Issuer, "https://") && !strings.HasPrefix(cfg.Issuer, "http://") {
		errs = append(errs, errors.New("ssf: issuer must be an http(s) URL"))
	}
	if cfg.Signer == nil {
		errs = append(errs, errors.New("ssf: signer cannot be nil"))
	}
	if cfg.Store == nil {
		errs = append(errs, errors.New("ssf: store cannot be nil"))
	}
	if cfg.Feed == nil {
		errs = append(errs, errors.New("ssf: feed cannot be nil"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	cfg.Issuer = strings.TrimSuffix(cfg.Issuer, "/")
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = DefaultRetryBase
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = DefaultRetryMax
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: pushTimeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if cfg.Owner == "" {
		cfg.Owner = broker.NewID("ssf")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &Transmitter{cfg: cfg, hosts: map[string]bool{}, log: cfg.Logger, now: cfg.Now, ended: map[string]time.Time{}}
	for _, h := range cfg.PushHosts {
		t.hosts[strings.ToLower(h)] = true
	}
	t.sets = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "valet_ssf_sets_total",
		Help: "Security Event Tokens by what became of them: queued, delivered, retried, rejected, dropped, queue_full, acked."},
		[]string{"result"})
	for _, r := range []string{ResultQueued, ResultDelivered, ResultRetried, ResultRejected, ResultDropped, ResultQueueFull, ResultAcked} {
		t.sets.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(t.sets); err != nil {
			return nil, fmt.Errorf("ssf: registering metrics: %w", err)
		}
	}
	return t, nil
}

// Metadata is the transmitter configuration metadata (SSF 1.0 section 7.1).
type Metadata struct {
	SpecVersion              string           `json:"spec_version"`
	Issuer                   string           `json:"issuer"`
	JWKSURI                  string           `json:"jwks_uri"`
	DeliveryMethodsSupported []string         `json:"delivery_methods_supported"`
	ConfigurationEndpoint    string           `json:"configuration_endpoint"`
	StatusEndpoint           string           `json:"status_endpoint"`
	AddSubjectEndpoint       string           `json:"add_subject_endpoint"`
	RemoveSubjectEndpoint    string           `json:"remove_subject_endpoint"`
	VerificationEndpoint     string           `json:"verification_endpoint"`
	CriticalSubjectMembers   []string         `json:"critical_subject_members,omitempty"`
	AuthorizationSchemes     []map[string]any `json:"authorization_schemes"`
	DefaultSubjects          string           `json:"default_subjects"`
}

// Metadata returns the document served at /.well-known/ssf-configuration.
func (t *Transmitter) Metadata() Metadata {
	b := t.cfg.Issuer
	return Metadata{
		SpecVersion: SpecVersion, Issuer: b, JWKSURI: b + "/.well-known/jwks.json",
		DeliveryMethodsSupported: []string{DeliveryPush, DeliveryPoll},
		ConfigurationEndpoint:    b + "/ssf/streams", StatusEndpoint: b + "/ssf/status",
		AddSubjectEndpoint: b + "/ssf/subjects:add", RemoveSubjectEndpoint: b + "/ssf/subjects:remove",
		VerificationEndpoint: b + "/ssf/verify",
		AuthorizationSchemes: []map[string]any{{"spec_urn": "urn:ietf:rfc:6750"}},
		DefaultSubjects:      "ALL",
	}
}

// Counter is valet_ssf_sets_total, for tests.
func (t *Transmitter) Counter(result string) prometheus.Counter {
	return t.sets.WithLabelValues(result)
}

func newJTI() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sign builds and signs the SET of ev for stream s (SSF 1.0 section 4.1).
func (t *Transmitter) sign(s Stream, ev Event) (Queued, error) {
	payload := map[string]any{}
	for k, v := range ev.Payload {
		payload[k] = v
	}
	if ev.Type != EventVerification && !ev.At.IsZero() {
		payload["event_timestamp"] = ev.At.Unix()
	}
	claims := map[string]any{
		"jti": newJTI(), "iat": t.now().Unix(), "sub_id": ev.Subject,
		"events": map[string]any{ev.Type: payload},
	}
	switch len(s.Audience) {
	case 0:
	case 1:
		claims["aud"] = s.Audience[0]
	default:
		claims["aud"] = s.Audience
	}
	if ev.Txn != "" {
		claims["txn"] = ev.Txn
	}
	set, err := t.cfg.Signer.SignSET(claims)
	if err != nil {
		return Queued{}, err
	}
	return Queued{JTI: claims["jti"].(string), SET: set}, nil
}

// wants reports whether stream s takes ev: enabled or paused, the type
// delivered, and its subject (or a member of it) not removed.
func (s Stream) wants(ev Event) bool {
	if s.Status == StatusDisabled {
		return false
	}
	if ev.Type != EventVerification && !slices.Contains(s.EventsDelivered, ev.Type) {
		return false
	}
	if len(s.Excluded) > 0 {
		for _, m := range ev.Subject.members() {
			if slices.Contains(s.Excluded, m.key()) {
				return false
			}
		}
	}
	return true
}

// publish signs ev for every stream that takes it and queues it there.
func (t *Transmitter) publish(ctx context.Context, streams []Stream, ev Event) error {
	for _, s := range streams {
		if !s.wants(ev) {
			continue
		}
		if err := t.enqueue(ctx, s, ev); err != nil {
			return err
		}
	}
	return nil
}

func (t *Transmitter) enqueue(ctx context.Context, s Stream, ev Event) error {
	q, err := t.sign(s, ev)
	if err != nil {
		return fmt.Errorf("signing SET for stream %s: %w", s.ID, err)
	}
	ok, err := t.cfg.Store.Enqueue(ctx, s.ID, q, t.cfg.QueueSize)
	if err != nil {
		return fmt.Errorf("queueing SET for stream %s: %w", s.ID, err)
	}
	if !ok {
		t.sets.WithLabelValues(ResultQueueFull).Inc()
		t.log.WarnContext(ctx, "ssf stream queue full; SET dropped", "stream_id", s.ID, "jti", q.JTI, "event", ev.Type)
		return nil
	}
	t.sets.WithLabelValues(ResultQueued).Inc()
	return nil
}

// events maps one revocation feed entry to security events.
func (t *Transmitter) events(ctx context.Context, e broker.FeedEntry) []Event {
	switch {
	case e.Control != nil:
		if e.Control.Kind != broker.ControlFreezeAgent {
			return nil
		}
		typ := EventAccountDisabled
		if !e.ControlActive {
			typ = EventAccountEnabled
		}
		return []Event{{Type: typ, Subject: t.agentSubject(e.Control.Issuer, e.Control.Target), At: e.Control.At,
			Payload: map[string]any{}, Txn: e.Cursor}}
	case e.Epoch != nil:
		// A revoked-before epoch of an agent ends every session it began
		// before then; template and issuer epochs name no subject.
		issuer, agent, ok := strings.Cut(e.Epoch.Key, "/")
		if e.Epoch.Dimension != broker.DimAgent || !ok {
			return nil
		}
		return []Event{{Type: EventSessionRevoked, Subject: t.agentSubject(issuer, agent), At: e.Epoch.Before, Txn: e.Cursor,
			Payload: map[string]any{"initiating_entity": "admin",
				"reason_admin": map[string]any{"en": "every session of this agent begun at or before event_timestamp is revoked"}}}}
	case e.JTI == "":
		return nil
	}
	at := t.now()
	var user Subject
	var task broker.Task
	if t.cfg.Tasks != nil && e.TaskID != "" {
		if tk, _, err := t.cfg.Tasks.Task(ctx, e.TaskID); err == nil {
			task = tk
			user = t.agentSubject(tk.Issuer, tk.Agent)
			if !tk.EndedAt.IsZero() {
				at = tk.EndedAt
			}
		}
	}
	var session Subject
	if e.TaskID != "" {
		session = Opaque(e.TaskID)
	}
	out := []Event{{Type: EventCredentialChange, At: at, Txn: e.Cursor,
		Subject: Complex(map[string]Subject{"user": user, "session": session, "credential": Opaque(e.JTI)}),
		Payload: map[string]any{"credential_type": "app", "change_type": "revoke", "friendly_name": "Valet task token"}}}
	if e.TaskID != "" && t.firstEnd(e.TaskID) {
		p := map[string]any{"initiating_entity": "policy"}
		if task.EndReason != "" {
			p["reason_admin"] = map[string]any{"en": broker.Bound(task.EndReason, 256)}
		}
		if task.State == broker.StateRevoked {
			p["initiating_entity"] = "admin"
		}
		out = append([]Event{{Type: EventSessionRevoked, At: at, Txn: e.Cursor,
			Subject: Complex(map[string]Subject{"user": user, "session": session}), Payload: p}}, out...)
	}
	return out
}

// firstEnd reports whether task id's session-revoked is still to be sent
// (a task's end puts every credential on the feed).
func (t *Transmitter) firstEnd(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	if _, ok := t.ended[id]; ok {
		return false
	}
	if len(t.ended) >= 10000 {
		for k, at := range t.ended {
			if now.Sub(at) > time.Hour || len(t.ended) >= 10000 {
				delete(t.ended, k)
			}
		}
	}
	t.ended[id] = now
	return true
}

// agentSubject is an agent as an iss_sub subject when its issuer's URL is
// known, else opaque.
func (t *Transmitter) agentSubject(issuer, agent string) Subject {
	if u := t.cfg.IssuerURLs[issuer]; u != "" {
		return IssSub(u, agent)
	}
	return Opaque(agent)
}

// Run transmits until ctx ends: while this broker holds the lease, it
// follows the revocation feed from the stored cursor, queues the SETs of
// its entries and pushes the queues of push streams.
func (t *Transmitter) Run(ctx context.Context) {
	var sub *fanout.Subscription
	defer func() {
		if sub != nil {
			sub.Close()
		}
	}()
	for ctx.Err() == nil {
		ok, err := t.cfg.Store.Lease(ctx, t.cfg.Owner, leaseTTL)
		if err != nil || !ok {
			if err != nil && ctx.Err() == nil {
				t.log.WarnContext(ctx, "ssf transmitter lease unavailable", "err", err)
			}
			if sub != nil {
				sub.Close()
				sub = nil
			}
			sleep(ctx, tick)
			continue
		}
		if sub == nil {
			if sub, err = t.subscribe(ctx); err != nil {
				sleep(ctx, tick)
				continue
			}
		}
		if err := t.step(ctx, sub); err != nil {
			if ctx.Err() == nil {
				t.log.WarnContext(ctx, "ssf transmitter: feed follow interrupted; resuming from the stored cursor", "err", err)
			}
			sub.Close()
			sub = nil
			sleep(ctx, tick)
		}
		t.PushOnce(ctx)
	}
}

func (t *Transmitter) subscribe(ctx context.Context) (*fanout.Subscription, error) {
	cursor, err := t.cfg.Store.Cursor(ctx)
	if err != nil {
		return nil, err
	}
	sub, err := t.cfg.Feed.Subscribe(ctx, feedCaller, cursor)
	if err != nil && cursor != "" {
		t.log.WarnContext(ctx, "ssf transmitter cannot resume from its cursor; following from now", "cursor", cursor, "err", err)
		sub, err = t.cfg.Feed.Subscribe(ctx, feedCaller, "")
	}
	if err != nil {
		return nil, err
	}
	if cursor == "" {
		if err := t.cfg.Store.SetCursor(ctx, sub.Cursor()); err != nil {
			sub.Close()
			return nil, err
		}
	}
	return sub, nil
}

// step reads one batch of feed entries, queues their SETs and saves the
// cursor after them.
func (t *Transmitter) step(ctx context.Context, sub *fanout.Subscription) error {
	entries, err := sub.Next(ctx, tick)
	if err != nil || len(entries) == 0 {
		return err
	}
	streams, err := t.cfg.Store.Streams(ctx)
	if err != nil {
		return err
	}
	for _, e := range entries {
		for _, ev := range t.events(ctx, e) {
			if err := t.publish(ctx, streams, ev); err != nil {
				return err
			}
		}
	}
	return t.cfg.Store.SetCursor(ctx, sub.Cursor())
}

// Publish queues events on every stream that takes them, now (the feed
// follower's path, for callers outside it and tests).
func (t *Transmitter) Publish(ctx context.Context, evs ...Event) error {
	streams, err := t.cfg.Store.Streams(ctx)
	if err != nil {
		return broker.Unavailable("the SSF stream store", err)
	}
	for _, ev := range evs {
		if err := t.publish(ctx, streams, ev); err != nil {
			return broker.Unavailable("the SSF stream store", err)
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

// backoff is the wait before attempt n+1: RetryBase·2ⁿ capped at RetryMax,
// with ±50% jitter.
func (t *Transmitter) backoff(n int) time.Duration {
	d := t.cfg.RetryBase
	for i := 0; i < n && d < t.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, t.cfg.RetryMax)
	return d/2 + time.Duration(mrand.Int64N(int64(d)+1))
}
