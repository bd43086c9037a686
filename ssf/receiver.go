package ssf

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/incident"
)

// Action is what Valet does about one event type from a transmitter.
type Action string

const (
	// ActionFreezeAgent freezes the subject as an agent (a freeze_agent
	// control, set with revoke: its live tasks end too).
	ActionFreezeAgent Action = "freeze_agent"
	// ActionRevokeTasks revokes every live task held by or on behalf of
	// the subject (a bulk revocation job).
	ActionRevokeTasks Action = "revoke_tasks"
	// ActionQuarantineTemplate tightens the transmitter's configured
	// Templates: each gets a quarantine_template control, set with revoke
	// (no declaration passes, its live tasks end), whatever the subject,
	// until an admin lifts it.
	ActionQuarantineTemplate Action = "quarantine_template"
)

// TrustedTransmitter is one SSF transmitter whose SETs Valet acts on.
type TrustedTransmitter struct {
	// Name is the path segment of its push endpoint
	// (/ssf/receive/{name}) and the actor of its actions (admin:ssf/{name}).
	Name string
	// Issuer is the iss its SETs must carry; JWKSURL where its keys are
	// (empty: OIDC discovery at Issuer); Algorithms those accepted
	// (default RS256 and ES256).
	Issuer     string
	JWKSURL    string
	Algorithms []string
	// Audience are the aud values accepted; a SET must name one.
	Audience []string
	// AuthorizationHeader, when set, must be the Authorization header of
	// every push (the stream's authorization_header at the transmitter).
	AuthorizationHeader string
	// SubjectIssuer is the name of the Valet trusted issuer whose
	// principals the transmitter's subjects are; SubjectIssuerURL its URL,
	// which an iss_sub subject must carry.
	SubjectIssuer    string
	SubjectIssuerURL string
	// Actions maps event type URIs to actions; other events are accepted
	// and ignored.
	Actions map[string]Action
	// Templates are the templates a quarantine_template action suspends
	// (required with that action).
	Templates []string
}

// IncidentControls are the incident controls a receiver acts through
// (incident.Admin): each call is audited there with the reason given.
type IncidentControls interface {
	PutControl(ctx context.Context, who incident.AdminPrincipal, c broker.Control, revoke, force bool) (broker.Control, *incident.RevocationJob, error)
	Revoke(ctx context.Context, who incident.AdminPrincipal, sel incident.Selector, reason string) (incident.RevocationJob, error)
}

// ReplayStore records SET jtis (broker.Limiter's Once).
type ReplayStore interface {
	Once(ctx context.Context, key string, until time.Time) (bool, error)
}

// ReceiverConfig configures a Receiver.
type ReceiverConfig struct {
	Transmitters []TrustedTransmitter
	Actions      IncidentControls
	Replay       ReplayStore
	// MaxAge is how old (by iat) a SET may be (default 24 h); jtis are
	// kept that long. Leeway is the clock skew allowed on iat (default
	// 30 s).
	MaxAge time.Duration
	Leeway time.Duration
	// KeyOptions tune the transmitters' key sets (HTTP client, refresh).
	KeyOptions identity.Options
	Logger     *slog.Logger
	Now        func() time.Time
}

// Defaults and bounds of the receiver.
const (
	DefaultSETMaxAge = 24 * time.Hour
	defaultLeeway    = 30 * time.Second
	maxSETBytes      = 16 << 10
	maxJTILen        = 128
	maxEvents        = 8
)

type trusted struct {
	cfg  TrustedTransmitter
	keys *identity.KeySet
}

// Receiver takes SETs pushed by trusted transmitters (RFC 8935), verifies
// them as identity tokens are verified, refuses replays and maps their
// events to incident controls. Safe for concurrent use.
type Receiver struct {
	byName map[string]*trusted
	cfg    ReceiverConfig
	log    *slog.Logger
	now    func() time.Time

	// failed are the SETs (transmitter:jti) whose action failed on this
	// broker after their jti was recorded: a push of one again is the
	// transmitter's retry, not a replay, and is let through once.
	mu     sync.Mutex
	failed map[string]time.Time
}

// maxFailed bounds Receiver.failed; retryWindow is how long a failed SET
// may be pushed again.
const (
	maxFailed   = 1000
	retryWindow = time.Hour
)

func (r *Receiver) markFailed(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	for k, at := range r.failed {
		if now.Sub(at) > retryWindow {
			delete(r.failed, k)
		}
	}
	if len(r.failed) < maxFailed {
		r.failed[key] = now
	}
}

// retrying reports, once, whether key's action failed here recently.
func (r *Receiver) retrying(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.failed[key]
	delete(r.failed, key)
	return ok && r.now().Sub(at) <= retryWindow
}

// NewReceiver checks cfg, reporting every problem at once.
func NewReceiver(cfg ReceiverConfig) (*Receiver, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if cfg.Actions == nil {
		bad("ssf receiver: incident controls cannot be nil")
	}
	if cfg.Replay == nil {
		bad("ssf receiver: replay store cannot be nil")
	}
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = DefaultSETMaxAge
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = defaultLeeway
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.KeyOptions.Now == nil {
		cfg.KeyOptions.Now = cfg.Now
	}
	if cfg.KeyOptions.Logger == nil {
		cfg.KeyOptions.Logger = cfg.Logger
	}
	r := &Receiver{byName: map[string]*trusted{}, cfg: cfg, log: cfg.Logger, now: cfg.Now, failed: map[string]time.Time{}}
	for i, tt := range cfg.Transmitters {
		where := fmt.Sprintf("ssf.receiver.transmitters[%d]", i)
		if tt.Name == "" || len(tt.Name) > 64 || strings.ContainsFunc(tt.Name, func(c rune) bool {
			return !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_')
		}) {
			bad("%s.name: must be 1 to 64 of a-z, 0-9, - and _", where)
		}
		if _, dup := r.byName[tt.Name]; dup {
			bad("%s.name: %q is used twice", where, tt.Name)
		}
		if len(tt.Audience) == 0 || slices.Contains(tt.Audience, "") {
			bad("%s.audience: at least one non-empty audience is required", where)
		}
		if tt.SubjectIssuer == "" {
			bad("%s.subject_issuer: required (the Valet issuer whose principals its subjects are)", where)
		}
		for typ, a := range tt.Actions {
			switch a {
			case ActionFreezeAgent, ActionRevokeTasks:
			case ActionQuarantineTemplate:
				if len(tt.Templates) == 0 {
					bad("%s.actions[%q]: %s needs the templates it suspends (%s.templates)", where, typ, a, where)
				}
			default:
				bad("%s.actions[%q]: %q is not an action (want %s, %s or %s)", where, typ, a, ActionFreezeAgent, ActionRevokeTasks, ActionQuarantineTemplate)
			}
		}
		for j, name := range tt.Templates {
			if name == "" || len(name) > 128 || !printable(name) {
				bad("%s.templates[%d]: must be a template name", where, j)
			}
		}
		algs := tt.Algorithms
		if len(algs) == 0 {
			algs = []string{"RS256", "ES256"}
		}
		ks, err := identity.NewKeySet(tt.Name, tt.Issuer, tt.JWKSURL, algs, cfg.KeyOptions)
		if err != nil {
			bad("%s: %w", where, err)
			continue
		}
		r.byName[tt.Name] = &trusted{cfg: tt, keys: ks}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

// setError is an RFC 8935 section 2.3 error.
type setError struct {
	status int
	Err    string `json:"err"`
	Desc   string `json:"description"`
	cause  error
}

func (e *setError) Error() string { return e.Err + ": " + e.Desc }

func refuse(code, desc string) *setError {
	return &setError{status: http.StatusBadRequest, Err: code, Desc: desc}
}

// ServeHTTP is the push endpoint /ssf/receive/{transmitter} (RFC 8935
// section 2): 202 once the SET is verified and its actions taken; 400 with
// an RFC 8935 error for a SET refused; 503 when keys, the replay store or
// the incident controls cannot be reached.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	name := chi.URLParam(req, "transmitter")
	tt, ok := r.byName[name]
	if !ok {
		writeSETError(w, &setError{status: http.StatusNotFound, Err: "invalid_request", Desc: "no such transmitter"})
		return
	}
	err := r.receive(req, tt)
	if err == nil {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	var se *setError
	if !errors.As(err, &se) {
		se = &setError{status: http.StatusServiceUnavailable, Err: "temporarily_unavailable", Desc: "try again later", cause: err}
	}
	r.log.WarnContext(req.Context(), "ssf SET refused", "transmitter", name, "err", se.Err, "reason", se.Desc, "cause", se.cause)
	writeSETError(w, se)
}

func writeSETError(w http.ResponseWriter, se *setError) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(se.status)
	_ = json.NewEncoder(w).Encode(se)
}

func (r *Receiver) receive(req *http.Request, tt *trusted) error {
	if ct := req.Header.Get("Content-Type"); !strings.EqualFold(strings.TrimSpace(strings.Split(ct, ";")[0]), "application/secevent+jwt") {
		return &setError{status: http.StatusUnsupportedMediaType, Err: "invalid_request", Desc: "Content-Type must be application/secevent+jwt"}
	}
	if want := tt.cfg.AuthorizationHeader; want != "" &&
		subtle.ConstantTimeCompare([]byte(req.Header.Get("Authorization")), []byte(want)) != 1 {
		return &setError{status: http.StatusUnauthorized, Err: "authentication_failed", Desc: "the Authorization header is missing or wrong"}
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, maxSETBytes+1))
	if err != nil {
		return refuse("invalid_request", "the body could not be read")
	}
	set, err := r.Verify(req.Context(), tt.cfg.Name, strings.TrimSpace(string(body)))
	if err != nil {
		return err
	}
	if err := r.act(req.Context(), tt, set); err != nil {
		var se *setError
		if !errors.As(err, &se) {
			r.markFailed(tt.cfg.Name + ":" + set.JTI)
		}
		return err
	}
	return nil
}

// SET is a verified Security Event Token.
type SET struct {
	JTI    string
	Issued time.Time
	SubID  Subject
	Events map[string]map[string]any
}

// Verify checks a SET from transmitter name: size, typ secevent+jwt, the
// signature with the transmitter's keys, iss, aud, iat (not in the future,
// not older than MaxAge), jti, events and sub_id, and records its jti; a
// jti seen before is refused. Errors are RFC 8935 errors, except those
// wrapping broker.ErrUnavailable.
func (r *Receiver) Verify(ctx context.Context, name, raw string) (SET, error) {
	tt, ok := r.byName[name]
	if !ok {
		return SET{}, refuse("invalid_issuer", "no such transmitter")
	}
	if len(raw) == 0 || len(raw) > maxSETBytes {
		return SET{}, refuse("invalid_request", fmt.Sprintf("a SET must be 1 to %d bytes", maxSETBytes))
	}
	if strings.Count(raw, ".") != 2 {
		return SET{}, refuse("invalid_request", "a SET must be a compact JWS")
	}
	hb, err := base64.RawURLEncoding.DecodeString(raw[:strings.IndexByte(raw, '.')])
	if err != nil {
		return SET{}, refuse("invalid_request", "the SET header is not base64url")
	}
	var h struct {
		Typ  string `json:"typ"`
		Crit []any  `json:"crit"`
	}
	if err := json.Unmarshal(hb, &h); err != nil {
		return SET{}, refuse("invalid_request", "the SET header is not JSON")
	}
	if !strings.EqualFold(h.Typ, "secevent+jwt") && !strings.EqualFold(h.Typ, "application/secevent+jwt") {
		return SET{}, refuse("invalid_request", "the SET typ must be secevent+jwt")
	}
	if h.Crit != nil {
		return SET{}, refuse("invalid_request", "crit headers are not supported")
	}
	payload, err := tt.keys.VerifySignature(ctx, raw)
	if err != nil {
		if errors.Is(err, broker.ErrUnavailable) {
			return SET{}, err
		}
		return SET{}, &setError{status: http.StatusBadRequest, Err: "invalid_key", Desc: "the signature does not verify", cause: err}
	}
	var c struct {
		Iss    *string                   `json:"iss"`
		Aud    json.RawMessage           `json:"aud"`
		IAT    *float64                  `json:"iat"`
		Exp    *float64                  `json:"exp"`
		JTI    *string                   `json:"jti"`
		SubID  Subject                   `json:"sub_id"`
		Events map[string]map[string]any `json:"events"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return SET{}, refuse("invalid_request", "the SET claims are malformed")
	}
	if c.Iss == nil || *c.Iss != tt.cfg.Issuer {
		return SET{}, refuse("invalid_issuer", "iss is not this transmitter's")
	}
	if !audienceMatches(c.Aud, tt.cfg.Audience) {
		return SET{}, refuse("invalid_audience", "aud does not name this receiver")
	}
	now := r.now()
	if c.IAT == nil || math.IsNaN(*c.IAT) || math.IsInf(*c.IAT, 0) {
		return SET{}, refuse("invalid_request", "iat is required")
	}
	iat := time.Unix(int64(*c.IAT), 0)
	switch {
	case iat.After(now.Add(r.cfg.Leeway)):
		return SET{}, refuse("invalid_request", "iat is in the future")
	case iat.Before(now.Add(-r.cfg.MaxAge)):
		return SET{}, refuse("invalid_request", "the SET is too old")
	case c.Exp != nil && time.Unix(int64(*c.Exp), 0).Before(now.Add(-r.cfg.Leeway)):
		return SET{}, refuse("invalid_request", "the SET has expired")
	}
	if c.JTI == nil || *c.JTI == "" || len(*c.JTI) > maxJTILen || !printable(*c.JTI) {
		return SET{}, refuse("invalid_request", fmt.Sprintf("jti must be 1 to %d printable characters", maxJTILen))
	}
	if len(c.Events) == 0 || len(c.Events) > maxEvents {
		return SET{}, refuse("invalid_request", fmt.Sprintf("events must hold 1 to %d events", maxEvents))
	}
	if c.SubID == nil {
		for _, ev := range c.Events { // pre-SSF 1.0 events carry the subject inside the event
			if s, ok := ev["subject"].(map[string]any); ok {
				c.SubID = s
			}
		}
	}
	first, err := r.cfg.Replay.Once(ctx, "ssf:"+tt.cfg.Name+":"+*c.JTI, iat.Add(r.cfg.MaxAge+r.cfg.Leeway))
	if err != nil {
		return SET{}, fmt.Errorf("recording SET jti: %w: %w", broker.ErrUnavailable, err)
	}
	if !first && !r.retrying(tt.cfg.Name+":"+*c.JTI) {
		return SET{}, refuse("invalid_request", "this jti was received before")
	}
	return SET{JTI: *c.JTI, Issued: iat, SubID: c.SubID, Events: c.Events}, nil
}

// audienceMatches reads aud as a string or a non-empty array of strings
// and reports whether one is accepted.
func audienceMatches(raw json.RawMessage, accepted []string) bool {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return one != "" && slices.Contains(accepted, one)
	}
	var many []string
	if json.Unmarshal(raw, &many) != nil {
		return false
	}
	for _, a := range many {
		if a != "" && slices.Contains(accepted, a) {
			return true
		}
	}
	return false
}

// act takes the configured action of each event, audited by the incident
// controls with the SET's jti and event type as the reason.
func (r *Receiver) act(ctx context.Context, tt *trusted, set SET) error {
	types := make([]string, 0, len(set.Events))
	for typ := range set.Events {
		types = append(types, typ)
	}
	slices.Sort(types)
	who := incident.AdminPrincipal{Issuer: "ssf", Subject: tt.cfg.Name, Role: incident.RoleResponder}
	for _, typ := range types {
		action, ok := tt.cfg.Actions[typ]
		if !ok {
			r.log.InfoContext(ctx, "ssf event without an action ignored", "transmitter", tt.cfg.Name, "jti", set.JTI,
				"event", boundPrintable(typ, 128))
			continue
		}
		reason := "ssf " + tt.cfg.Name + " " + typ + " jti=" + set.JTI
		if action == ActionQuarantineTemplate {
			// The signal tightens templates, whoever its subject is.
			for _, name := range tt.cfg.Templates {
				if _, _, err := r.cfg.Actions.PutControl(ctx, who, broker.Control{Kind: broker.ControlQuarantineTemplate, Target: name,
					Reason: reason}, true, true); err != nil {
					return fmt.Errorf("taking action %s on template %s: %w", action, name, err)
				}
			}
			r.log.InfoContext(ctx, "ssf signal acted on", "transmitter", tt.cfg.Name, "jti", set.JTI, "event", typ,
				"action", action, "templates", tt.cfg.Templates)
			continue
		}
		subject, err := r.principal(tt, set.SubID)
		if err != nil {
			return err
		}
		switch action {
		case ActionFreezeAgent:
			_, _, err = r.cfg.Actions.PutControl(ctx, who, broker.Control{Kind: broker.ControlFreezeAgent, Target: subject,
				Issuer: tt.cfg.SubjectIssuer, Reason: reason}, true, true)
		case ActionRevokeTasks:
			_, err = r.cfg.Actions.Revoke(ctx, who, incident.Selector{Agent: subject, Issuer: tt.cfg.SubjectIssuer}, reason)
		}
		if err != nil {
			if broker.ErrorCode(err) == broker.CodeInvalid {
				return &setError{status: http.StatusBadRequest, Err: "invalid_request", Desc: "the subject cannot be acted on", cause: err}
			}
			return fmt.Errorf("taking action %s: %w", action, err)
		}
		r.log.InfoContext(ctx, "ssf signal acted on", "transmitter", tt.cfg.Name, "jti", set.JTI, "event", typ,
			"action", action, "subject", subject)
	}
	return nil
}

// principal reads the Valet principal a subject names: iss_sub of the
// subject issuer, opaque, email, or a complex subject's user member.
func (r *Receiver) principal(tt *trusted, s Subject) (string, error) {
	if s["format"] == "complex" {
		u, _ := s["user"].(map[string]any)
		s = u
	}
	str := func(k string) string { v, _ := s[k].(string); return v }
	var id string
	switch str("format") {
	case "iss_sub":
		if str("iss") != tt.cfg.SubjectIssuerURL || tt.cfg.SubjectIssuerURL == "" {
			return "", refuse("invalid_request", "the subject's iss is not the configured subject issuer")
		}
		id = str("sub")
	case "opaque":
		id = str("id")
	case "email":
		id = str("email")
	default:
		return "", refuse("invalid_request", "the subject must be iss_sub, opaque, email, or complex with a user of those")
	}
	if id == "" || len(id) > 256 || !printable(id) {
		return "", refuse("invalid_request", "the subject's identifier must be 1 to 256 printable characters")
	}
	return id, nil
}
