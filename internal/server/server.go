// Package server is Valet's one assembly: it turns already-built parts
// (identity, task tokens, stores, auditors, templates and settings) into the
// Service, the admin API, the HTTP handler and the background loops, and
// serves them on a listener; `valet serve`, `valet dev`, the end-to-end
// tests and the bench all build through it.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/httpapi"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/delegation"
	"github.com/valet-dev/valet/dpop"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/inventory"
	"github.com/valet-dev/valet/metrics"
	"github.com/valet-dev/valet/monitor"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/openapi"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/reconcile"
	"github.com/valet-dev/valet/renewal"
	"github.com/valet-dev/valet/ssf"
	"github.com/valet-dev/valet/stepup"
	"github.com/valet-dev/valet/toolevents"
)

// MaxHeaderBytes caps a request's header block. What Valet needs is one
// identity or task token (limits.max_token_bytes, default 16 KiB, at most
// half of this cap), one DPoP proof (a compact JWS carrying a public JWK:
// about 1 KiB for P-256, 2.5 KiB for RSA-4096) and ordinary headers (a few
// KiB): 64 KiB leaves room for all with margin. A token between
// max_token_bytes and this cap gets the identity check's 401; a larger
// header block gets net/http's 431.
const MaxHeaderBytes = 64 << 10

// shutdownGrace is how long Run lets requests in flight finish once its
// context ends.
const shutdownGrace = 10 * time.Second

// TaskTokens is the task-token issuer as the server needs it: it mints and
// verifies task tokens (broker.TaskTokens) and publishes its keys.
// issuers.JWT implements it.
type TaskTokens interface {
	broker.TaskTokens
	// VerifyExpired verifies a task token expired at most grace ago: only
	// to accept late tool-call reports (toolevents.LateVerifier).
	VerifyExpired(raw string, grace time.Duration) (broker.TaskClaims, error)
	// JWKS is the published key set document.
	JWKS() []byte
	// Algorithms are the algorithms of the published keys.
	Algorithms() []string
}

// Controls is the incident controls store with its refresh loop
// (revocation.Controls): Reload reads every control once, Run keeps the
// copy current until its context ends. Safe for concurrent use.
type Controls interface {
	broker.ControlStore
	Reload(ctx context.Context)
	Run(ctx context.Context)
}

// Options are the server's parts, already built, and its settings. Reading
// config files, flags, key files and the environment is the caller's work.
type Options struct {
	// PublicURL is Valet's own URL: the iss of its task tokens.
	PublicURL string
	// Identity verifies the agents' identity tokens.
	Identity broker.Authenticator
	// Tokens issues the task tokens.
	Tokens TaskTokens
	// Issuers mint further credential kinds (Vault) beside the task token.
	Issuers []broker.Issuer
	// Ledger tracks every task and credential.
	Ledger broker.Ledger
	// Epochs, when set, makes introspection honour revoked-before epochs.
	Epochs broker.EpochStore
	// Loss, when set, tells /readyz that the ledger lost its data
	// (revocation.RedisLedger).
	Loss broker.LossReporter
	// Controls, when set, is checked by every declaration (freeze,
	// quarantine, distrust); New loads it once, Run keeps it current.
	Controls Controls
	// Queue, when set, keeps failed revocations for the retry loop.
	Queue broker.RevocationQueue
	// ReconcileGrace spares credentials younger than it from the
	// reconciler (0: reconcile.DefaultGrace).
	ReconcileGrace time.Duration
	// Auditors receive every audit event; each must accept it (at least
	// one is required).
	Auditors []broker.Auditor
	// Templates are the templates in force at start.
	Templates *policy.Set
	// Reload, when set, is where the template watcher reloads templates
	// from (on SIGHUP and, if Watch, when a file changes).
	Reload *TemplateReload
	// Clients may call introspection and revocation with a client secret.
	Clients []clientauth.Client
	// IntrospectionClients admit identity tokens as introspection callers.
	IntrospectionClients []clientauth.Rule
	// Agent configures the agent controls (DPoP, budgets). Its Limiter is
	// also the step-up service's and the OAuth grants' replay store.
	Agent broker.AgentConfig
	// Records keeps action tokens, approvals and tool-call events; nil
	// makes those answer 503.
	Records broker.Records
	// StepUp configures sensitive actions (action tokens, approvals).
	StepUp StepUpOptions
	// EventRetention is how long tool-call events stay after their task's
	// deadline, and how late a report may come (0:
	// toolevents.DefaultEventRetention). Set it to the ledger's retention.
	EventRetention time.Duration
	// Admin, when set, adds the admin API.
	Admin *AdminOptions
	// Inventory, when set, records every agent granted a task (off the
	// request path) and serves the inventory on the admin API.
	Inventory *InventoryOptions
	// Feed, when set, serves the revocation stream through one fan-out
	// limited by FeedLimits (zero: the defaults).
	Feed       broker.Feed
	FeedLimits fanout.Limits
	// Metrics, when set, counts declarations, revocations and requests and
	// serves /metrics.
	Metrics *MetricsOptions
	// OAuth, when set, serves the OAuth grants (jwt-bearer, client
	// credentials) at the token endpoint.
	OAuth *OAuthOptions
	// SSF, when set, speaks OpenID Shared Signals (ssf.go).
	SSF *SSFOptions
	// Monitor, when set, runs the templates' monitor rules (monitor.go).
	Monitor *MonitorOptions
	// Ready are the checks, beyond the ledger, of /readyz.
	Ready []func(context.Context) error
	// Console, when set, serves the web console at /console (it needs
	// Admin).
	Console *ConsoleOptions
	// DevIdP, when set, is mounted at /dev (`valet dev` only).
	DevIdP http.Handler
	// MaxBodyBytes and RequestTimeout bound each request (0: httpapi's
	// defaults).
	MaxBodyBytes   int64
	RequestTimeout time.Duration
	// ReapInterval is how often the reaper ends tasks past their deadline
	// (default 1s). Below 0, Run starts no reaper: for tests that reap by
	// hand or play a replica whose reaper never runs.
	ReapInterval time.Duration
	// RetryInterval and ReconcileInterval, when above 0, run the retry
	// loop of failed revocations and the reconciler of orphan credentials.
	RetryInterval     time.Duration
	ReconcileInterval time.Duration
	// Background are further loops run for the life of Run (the Vault
	// session's renewal); each returns when its context ends.
	Background []func(context.Context)
	// Logger receives the server's logs (default: discarded).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// AdminOptions configure the admin API.
type AdminOptions struct {
	// Identity verifies the admins' identity tokens; Roles maps each role
	// to a CEL rule over their claims.
	Identity broker.Authenticator
	Roles    map[string]string
	// Jobs keeps bulk revocation jobs; Timeline reads the audit trail.
	Jobs     incident.JobStore
	Timeline incident.TimelineReader
	// AgentIssuers are the names of the agents' trusted issuers.
	AgentIssuers []string
	// JobLease, InlineBudget and JobBatch tune revocation jobs (0: the
	// defaults of incident.Config).
	JobLease     time.Duration
	InlineBudget time.Duration
	JobBatch     int
	// RollbackHosts are the hosts whose undo webhooks a rollback may call.
	RollbackHosts []string
	// ResumeEvery is how often unfinished revocation jobs are looked for
	// and resumed (default 5s).
	ResumeEvery time.Duration
}

// InventoryOptions configure the agent inventory.
type InventoryOptions struct {
	// Store keeps the inventory (revocation.RedisInventory or
	// MemoryInventory).
	Store inventory.Store
	// Labels computes owner labels from claims (nil: none).
	Labels *inventory.Labeler
}

// StepUpOptions configure sensitive actions: the calls of sensitive tools
// that need a policy check or a human approval (package stepup).
type StepUpOptions struct {
	// Actions mints and verifies action tokens (issuers.JWT does); without
	// it, action requests answer 503.
	Actions stepup.ActionTokens
	// ActionTTL is the life of an action token (0: stepup.MaxActionTTL).
	ActionTTL time.Duration
	// Resources are the ops-defined resource labels, by resource id.
	Resources map[string]map[string]string
	// Approvals configures the approval rule.
	Approvals stepup.ApprovalConfig
}

// OAuthOptions configure the token endpoint's OAuth grants. The replay
// store of assertion jtis is the agent controls' Limiter (Agent.Limiter).
type OAuthOptions struct {
	// Clients are the agents registered for client credentials.
	Clients []oauth.Client
	// MaxAssertionLife bounds a client assertion's exp from now (0: the
	// default).
	MaxAssertionLife time.Duration
	// DPoPNonce makes DPoP proofs at the token endpoint carry a server
	// nonce (RFC 9449 section 8), from a key each replica makes at start.
	DPoPNonce bool
	// Interactive, when set, turns on the authorization code grant; its
	// refresh tokens renew tasks through the server's renewal service
	// unless Interactive.Renewer is set, and its records are kept in
	// memory (one broker) unless Interactive.Store is set.
	Interactive *oauth.InteractiveConfig
	// UpstreamLogin, when Interactive.Upstream is nil, is where people
	// sign in: an identity.Login verified by Options.Identity (which must
	// be an *identity.Verifier trusting that issuer, with the client id
	// among its audiences). RedirectURL defaults to PublicURL +
	// oauth.CallbackPath.
	UpstreamLogin *identity.LoginConfig
}

// MetricsOptions configure the metrics.
type MetricsOptions struct {
	// BearerSecret, when set, is required of /metrics callers as
	// "Authorization: Bearer <secret>".
	BearerSecret string
	// Listener, when set, serves /metrics alone (and the main listener
	// serves none).
	Listener net.Listener
	// Live counts the live tasks and credentials in the shared ledger at
	// a time (nil: those gauges are left out).
	Live func(ctx context.Context, now time.Time) (tasks, creds int64, err error)
}

// Server is one assembled broker. Build it with New, serve it with Run.
type Server struct {
	o       Options
	svc     *broker.Service
	steps   *stepup.Service
	admin   *incident.Admin
	events  *toolevents.Service
	metrics *metrics.Metrics
	hub     *fanout.Hub
	sights  *inventory.Recorder
	ssf     *ssf.Transmitter
	monitor *monitor.Monitor
	handler http.Handler
	log     *slog.Logger
	// The background repair loops (package reconcile); retrier is nil
	// without Options.Queue.
	reaper     *reconcile.Reaper
	retrier    *reconcile.Retrier
	reconciler *reconcile.Reconciler
}

// New assembles the server from o; ctx bounds the start-up reads (the
// controls' first load).
func New(ctx context.Context, o Options) (*Server, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ReapInterval == 0 {
		o.ReapInterval = time.Second
	}
	if len(o.Auditors) == 0 {
		return nil, errors.New("server: at least one auditor is required")
	}
	if o.Tokens == nil {
		return nil, errors.New("server: task token issuer cannot be nil")
	}
	s := &Server{o: o, log: o.Logger}
	var auditor broker.Auditor = o.Auditors[0]
	if len(o.Auditors) > 1 {
		auditor = audit.Multi(o.Auditors)
	}
	var reaperLag func(time.Duration)
	if o.Metrics != nil {
		s.metrics = s.newMetrics()
		auditor = s.metrics.Auditor(auditor)
		reaperLag = s.metrics.ReaperLag()
	}
	if o.Monitor != nil {
		m, err := s.newMonitor(auditor)
		if err != nil {
			return nil, err
		}
		s.monitor, auditor = m, m
	}
	cfg := broker.Config{
		Identity: o.Identity, Tokens: o.Tokens, Issuers: o.Issuers, Ledger: o.Ledger, Auditor: auditor, Templates: o.Templates,
		Now: o.Now, Logger: o.Logger, Agent: o.Agent,
		Epochs: o.Epochs, Loss: o.Loss, RevocationQueue: o.Queue,
	}
	if o.Controls != nil {
		o.Controls.Reload(ctx)
		cfg.Controls = o.Controls
	}
	var agents inventory.Store
	if o.Inventory != nil {
		var err error
		if s.sights, err = inventory.NewRecorder(inventory.RecorderConfig{Store: o.Inventory.Store, Labels: o.Inventory.Labels, Logger: o.Logger}); err != nil {
			return nil, err
		}
		cfg.Sightings, agents = s.sights, o.Inventory.Store
	}
	revoker, err := stepup.NewRevoker(stepup.RevokerConfig{Actions: o.StepUp.Actions, Limiter: o.Agent.Limiter,
		Auditor: auditor, Now: o.Now, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	cfg.ActionRevoker = revoker
	if s.svc, err = broker.NewService(cfg); err != nil {
		return nil, err
	}
	if err := s.newRepairLoops(auditor, reaperLag); err != nil {
		return nil, err
	}
	clients, err := clientauth.New(clientauth.Config{Clients: o.Clients, Rules: o.IntrospectionClients, Identity: s.svc,
		Now: o.Now, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	s.steps, err = stepup.New(stepup.Config{
		Core: s.svc, Tokens: o.Tokens, Actions: o.StepUp.Actions, Records: o.Records, Limiter: o.Agent.Limiter,
		Auditor: auditor, ActionTTL: o.StepUp.ActionTTL, Resources: o.StepUp.Resources, Approvals: o.StepUp.Approvals,
		Now: o.Now, Logger: o.Logger,
	})
	if err != nil {
		return nil, err
	}
	ecfg := toolevents.Config{
		Core: eventsCore{s.svc}, Clients: clients, Tokens: o.Tokens, Ledger: o.Ledger, Auditor: auditor, Late: o.Tokens,
		ClientIDs: clients.ClientIDs(), Retention: o.EventRetention, Logger: o.Logger, Now: o.Now,
		Records: o.Records, // without one, events answer 503 as step-up's records do
	}
	deleg, err := delegation.New(delegation.Config{Core: s.svc, Tokens: o.Tokens, Auditor: auditor, Now: o.Now, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	renewals, err := renewal.New(renewal.Config{Core: s.svc, Ledger: o.Ledger, Auditor: auditor, Now: o.Now, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	if a := o.Admin; a != nil {
		if o.Controls == nil || o.Epochs == nil {
			return nil, errors.New("server: the admin API needs controls and epochs")
		}
		s.admin, err = incident.NewAdmin(incident.Config{
			Identity: a.Identity, Roles: a.Roles, Core: s.svc, Ledger: o.Ledger, Auditor: auditor, Controls: o.Controls,
			Jobs: a.Jobs, Epochs: o.Epochs, Timeline: a.Timeline, AgentIssuers: a.AgentIssuers, JobLease: a.JobLease,
			InlineBudget: a.InlineBudget, JobBatch: a.JobBatch, Logger: o.Logger, Now: o.Now, Inventory: agents,
		})
		if err != nil {
			return nil, err
		}
		ecfg.Rollback = toolevents.RollbackConfig{AllowedHosts: a.RollbackHosts}
	}
	if s.events, err = toolevents.New(ecfg); err != nil {
		return nil, err
	}
	if o.Feed != nil {
		if s.hub, err = fanout.New(o.Feed, o.FeedLimits, o.Logger); err != nil {
			return nil, err
		}
	}
	hopts := httpapi.Options{
		Service: s.svc, Clients: clients, StepUp: s.steps, Delegation: deleg, Issuer: o.PublicURL, JWKS: o.Tokens.JWKS(), SigningAlgs: o.Tokens.Algorithms(), OpenAPI: openapi.Spec,
		Ready: o.Ready, DevIdP: o.DevIdP, MaxBodyBytes: o.MaxBodyBytes, RequestTimeout: o.RequestTimeout, Logger: o.Logger,
		Events: s.events, Admin: s.admin, Feed: o.Feed, FeedHub: s.hub, Renewal: renewals,
	}
	if s.metrics != nil {
		hopts.Metrics = s.httpMetrics()
	}
	if o.SSF != nil {
		if hopts.SSF, hopts.SSFReceiver, err = s.newSSF(); err != nil {
			return nil, err
		}
		s.ssf = hopts.SSF
	}
	if oo := o.OAuth; oo != nil {
		var nonces *dpop.Nonces
		if oo.DPoPNonce {
			nonces = dpop.NewNonces(0, o.Now)
		}
		interactive, err := interactiveConfig(ctx, o, renewals)
		if err != nil {
			return nil, err
		}
		if hopts.OAuth, err = oauth.New(oauth.Config{
			Service: s.svc, Identity: o.Identity, Clients: oo.Clients, Once: o.Agent.Limiter, Issuer: o.PublicURL,
			MaxAssertionLife: oo.MaxAssertionLife, Interactive: interactive, Now: o.Now, Logger: o.Logger, DPoPNonces: nonces,
		}); err != nil {
			return nil, err
		}
	}
	if s.handler, err = httpapi.Handler(hopts); err != nil {
		return nil, err
	}
	if co := o.Console; co != nil {
		if s.handler, err = s.withConsole(co, s.handler); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// newRepairLoops builds the reaper, the retrier (with a queue) and the
// reconciler around the Service.
func (s *Server) newRepairLoops(auditor broker.Auditor, reaperLag func(time.Duration)) error {
	o := s.o
	var err error
	if s.reaper, err = reconcile.NewReaper(reconcile.ReaperConfig{Core: s.svc, Ledger: o.Ledger, Auditor: auditor, Lag: reaperLag,
		Now: o.Now, Logger: o.Logger}); err != nil {
		return err
	}
	if o.Queue != nil {
		if s.retrier, err = reconcile.NewRetrier(reconcile.RetrierConfig{Queue: o.Queue, Issuers: append([]broker.Issuer{o.Tokens}, o.Issuers...),
			Auditor: auditor, Now: o.Now, Logger: o.Logger}); err != nil {
			return err
		}
	}
	s.reconciler, err = reconcile.NewReconciler(reconcile.ReconcilerConfig{Sources: o.Issuers, Revoker: s.svc, Ledger: o.Ledger,
		Grace: o.ReconcileGrace, Now: o.Now, Logger: o.Logger})
	return err
}

// eventsCore is the Service as toolevents asks for it: its gate for a
// task token, with no adjustment of the standing.
type eventsCore struct{ *broker.Service }

func (c eventsCore) GateTaskToken(ctx context.Context, tc broker.TaskClaims) (broker.Task, error) {
	return c.Service.GateTaskToken(ctx, tc, nil)
}

// newMetrics builds the metrics; their gauges read the server's parts at
// scrape time.
func (s *Server) newMetrics() *metrics.Metrics {
	o := s.o
	mo := metrics.Options{
		KnownTemplate: func(n string) bool {
			set := o.Templates
			if s.svc != nil {
				set = s.svc.Templates()
			}
			if set == nil {
				return false
			}
			_, ok := set.Get(n)
			return ok
		},
		RunningJobs: func() float64 {
			if s.admin == nil {
				return 0
			}
			return float64(s.admin.RunningJobs())
		},
		FinishedJobs: func() float64 {
			if s.admin == nil {
				return 0
			}
			return float64(s.admin.FinishedJobs())
		},
		FeedSubscribers: func() float64 {
			if s.hub == nil {
				return 0
			}
			return float64(s.hub.Subscribers())
		},
		RevocationFailures: func() float64 {
			if s.svc == nil {
				return 0
			}
			n := s.svc.Stats().Failed
			if s.retrier != nil {
				n += s.retrier.Stats().RetryFailed
			}
			return float64(n)
		},
		SightingsLost: func() float64 {
			if s.sights == nil {
				return 0
			}
			return float64(s.sights.Lost())
		},
		Logger: o.Logger,
		Now:    o.Now,
	}
	if q := o.Queue; q != nil {
		mo.Pending = func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			n, err := q.Pending(ctx)
			if err != nil {
				return -1 // the queue cannot be read: visibly wrong, never a reassuring 0
			}
			return float64(n)
		}
	}
	if live := o.Metrics.Live; live != nil {
		mo.Live = func(ctx context.Context) (int64, int64, error) { return live(ctx, o.Now()) }
	}
	return metrics.New(mo)
}

// Service is the domain API the server serves.
func (s *Server) Service() *broker.Service { return s.svc }

// StepUp is the service of sensitive actions.
func (s *Server) StepUp() *stepup.Service { return s.steps }

// Admin is the admin API, nil without Options.Admin.
func (s *Server) Admin() *incident.Admin { return s.admin }

// ToolEvents are the tool-call events and rollback.
func (s *Server) ToolEvents() *toolevents.Service { return s.events }

// Handler is the whole HTTP surface.
func (s *Server) Handler() http.Handler { return s.handler }

// Metrics are the server's metrics, nil without Options.Metrics.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// SSF is the Shared Signals transmitter, nil without Options.SSF.Store.
func (s *Server) SSF() *ssf.Transmitter { return s.ssf }

// FeedHub is the revocation stream's fan-out, nil without Options.Feed.
func (s *Server) FeedHub() *fanout.Hub { return s.hub }

// Reaper ends tasks past their deadline; Run runs it every ReapInterval.
func (s *Server) Reaper() *reconcile.Reaper { return s.reaper }

// Retrier retries failed revocations, nil without Options.Queue; Run runs
// it every RetryInterval.
func (s *Server) Retrier() *reconcile.Retrier { return s.retrier }

// Reconciler revokes orphan credentials; Run runs it every
// ReconcileInterval.
func (s *Server) Reconciler() *reconcile.Reconciler { return s.reconciler }

// Run starts the background loops (controls refresh, reaper, revocation
// retries and reconciler, admin job resumption, template watcher, the
// Options' own loops), serves on ln (and /metrics on its own listener when
// set) and, once ctx ends, stops taking requests and lets those in flight
// finish for up to 10 seconds. It closes ln. It returns nil after a
// graceful shutdown, or the error that stopped serving.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	o := s.o
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	if o.Controls != nil {
		go o.Controls.Run(ctx)
	}
	if s.admin != nil {
		every := o.Admin.ResumeEvery
		if every <= 0 {
			every = 5 * time.Second
		}
		s.admin.Start(ctx, every)
	}
	for _, f := range o.Background {
		go f(ctx)
	}
	if s.sights != nil {
		go s.sights.Run(ctx)
	}
	if s.monitor != nil {
		go s.monitor.Run(ctx)
	}
	if o.RetryInterval > 0 && s.retrier != nil {
		go s.retrier.Run(ctx, o.RetryInterval)
	}
	if o.ReconcileInterval > 0 {
		go s.reconciler.Run(ctx, o.ReconcileInterval)
	}
	if o.Reload != nil {
		go s.watchTemplates(ctx, *o.Reload)
	}
	if s.metrics != nil && o.Metrics.Listener != nil {
		s.serveMetrics(ctx, o.Metrics.Listener)
	}
	if o.ReapInterval > 0 {
		go s.reaper.Run(ctx, o.ReapInterval)
	}
	if s.ssf != nil {
		go s.ssf.Run(ctx)
	}
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: MaxHeaderBytes,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
