// Package incident is the admin API's logic for incident response: admin
// roles, bulk revocation jobs, controls (freeze, quarantine, distrust) and
// the task listing and timeline a responder reads.
package incident

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/inventory"
	"github.com/valet-dev/valet/policy"
)

// Role is an admin's level. Each role can do what the ones below it can.
type Role int

const (
	RoleNone      Role = iota
	RoleViewer         // read tasks, controls, jobs and the audit trail
	RoleOperator       // templates
	RoleResponder      // revoke, freeze, quarantine, distrust
	RoleAdmin
)

var roleNames = []string{"none", "viewer", "operator", "responder", "admin"}

func (r Role) String() string {
	if r < 0 || int(r) >= len(roleNames) {
		return "none"
	}
	return roleNames[r]
}

// ParseRole reads a role name.
func ParseRole(s string) (Role, bool) {
	i := slices.Index(roleNames, s)
	if i <= 0 {
		return RoleNone, false
	}
	return Role(i), true
}

// AdminPrincipal is a verified human (or automation) on the admin API.
type AdminPrincipal struct {
	Issuer  string
	Subject string
	Role    Role
}

// Actor is how the audit trail names an admin.
func (p AdminPrincipal) Actor() string { return "admin:" + p.Issuer + "/" + p.Subject }

// Core is what the admin side needs of the domain core (broker.Service).
// Implementations must be safe for concurrent use.
type Core interface {
	// TaskEvent starts the audit event of type typ by actor about task t.
	TaskEvent(ctx context.Context, typ, actor string, t broker.Task) broker.Event
	// End finishes an active task (see broker.Service.End): ErrNotActive
	// with its record when it has ended already, ErrRevocationPending when
	// a credential could not be revoked at its source yet.
	End(ctx context.Context, id string, state broker.State, reason, actor string) (broker.Task, []broker.Credential, error)
	// EndMany ends a batch of at most broker.MaxEndMany tasks (see
	// broker.Service.EndMany): one EndResult per id, in order; an error
	// without results means none is known to have ended.
	EndMany(ctx context.Context, ids []string, state broker.State, reason, actor string) ([]broker.EndResult, error)
	// Templates is the template set in force.
	Templates() *policy.Set
}

// Config wires the admin side. Identity must trust only the admin issuers
// (never the agents'); Roles maps role names to CEL over `claims`.
type Config struct {
	Identity broker.Authenticator
	Roles    map[string]string
	// Core ends tasks and names templates; Ledger reads a task's records;
	// Auditor records every admin action (the Service's auditor).
	Core     Core
	Ledger   broker.Ledger
	Auditor  broker.Auditor
	Controls broker.ControlStore
	Jobs     JobStore
	Epochs   broker.EpochStore
	Timeline TimelineReader
	// Inventory, when set, serves the agent inventory and label selectors.
	Inventory inventory.Store
	// AgentIssuers are the names of the agents' trusted issuers: an agent
	// revoked without an issuer is revoked under each of them.
	AgentIssuers []string
	// JobLease is how long a broker holds a job before another may take it
	// over (it renews while it works); default 15s.
	JobLease time.Duration
	// InlineBudget is how long a revocation request runs its job before
	// answering 202 and continuing in the background; default 2s.
	InlineBudget time.Duration
	// JobBatch is how many tasks a job reads per step (and saves its
	// progress after); default 500.
	JobBatch int
	Logger   *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Admin is the incident-response API: bulk revocation, controls, and the
// task trail. It is safe for concurrent use.
type Admin struct {
	identity broker.Authenticator
	roles    []roleRule
	core     Core
	ledger   broker.Ledger
	audit    broker.Auditor
	controls broker.ControlStore
	jobs     JobStore
	epochs   broker.EpochStore
	timeline TimelineReader
	agents   inventory.Store
	issuers  []string
	lease    time.Duration
	inline   time.Duration
	batch    int
	owner    string
	log      *slog.Logger
	now      func() time.Time

	mu      sync.Mutex
	base    context.Context
	running map[string]bool
	done    atomic.Int64
}

type roleRule struct {
	role Role
	cond policy.Condition
}

// NewAdmin checks cfg and compiles the role rules.
func NewAdmin(cfg Config) (*Admin, error) {
	var missing []string
	for _, m := range []struct {
		name string
		nil  bool
	}{{"identity", cfg.Identity == nil}, {"core", cfg.Core == nil}, {"ledger", cfg.Ledger == nil}, {"auditor", cfg.Auditor == nil},
		{"controls", cfg.Controls == nil}, {"jobs", cfg.Jobs == nil}, {"epochs", cfg.Epochs == nil}, {"timeline", cfg.Timeline == nil}} {
		if m.nil {
			missing = append(missing, m.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("admin: %s cannot be nil", strings.Join(missing, ", "))
	}
	a := &Admin{
		identity: cfg.Identity, core: cfg.Core, ledger: cfg.Ledger, audit: cfg.Auditor, controls: cfg.Controls, jobs: cfg.Jobs,
		epochs: cfg.Epochs, timeline: cfg.Timeline, agents: cfg.Inventory, issuers: cfg.AgentIssuers, lease: cfg.JobLease, inline: cfg.InlineBudget,
		owner: broker.NewID("brk"), log: cfg.Logger, now: cfg.Now, base: context.Background(), running: map[string]bool{},
	}
	var errs []error
	for name, expr := range cfg.Roles {
		r, ok := ParseRole(name)
		if !ok {
			errs = append(errs, fmt.Errorf("admin.roles: %q is not a role (viewer, operator, responder, admin)", name))
			continue
		}
		c, err := policy.CompileClaimsCondition(name, expr)
		if err != nil {
			errs = append(errs, fmt.Errorf("admin.roles.%s: %w", name, err))
			continue
		}
		a.roles = append(a.roles, roleRule{role: r, cond: c})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	slices.SortFunc(a.roles, func(x, y roleRule) int { return int(y.role - x.role) })
	if a.lease <= 0 {
		a.lease = 15 * time.Second
	}
	if a.inline <= 0 {
		a.inline = 2 * time.Second
	}
	if a.batch = cfg.JobBatch; a.batch <= 0 {
		a.batch = jobBatch
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	if a.now == nil {
		a.now = time.Now
	}
	return a, nil
}

// Authorize verifies an admin token and requires role need for action.
// Every attempt, allowed or not, is audited; an allowed attempt whose audit
// write fails is refused (no audit, no action).
func (a *Admin) Authorize(ctx context.Context, bearer string, need Role, action string) (AdminPrincipal, error) {
	ev := a.core.TaskEvent(ctx, "admin."+action, "", broker.Task{})
	ev.Detail = map[string]any{"required_role": need.String()}
	deny := func(actor, reason string, e *broker.Error) (AdminPrincipal, error) {
		ev.Actor, ev.Outcome, ev.Reason = actor, "denied", reason
		if err := a.audit.Record(ctx, ev); err != nil {
			a.log.ErrorContext(ctx, "audit write of a denied admin request failed", "err", err)
		}
		a.log.WarnContext(ctx, "admin request denied", "action", action, "actor", actor, "reason", reason)
		return AdminPrincipal{}, e
	}
	if bearer == "" {
		return deny("unknown", "no bearer token", broker.Unauthenticated(errors.New("no bearer token")))
	}
	p, err := a.identity.Authenticate(ctx, bearer)
	if err != nil {
		if errors.Is(err, broker.ErrUnavailable) {
			return AdminPrincipal{}, broker.Unavailable("the admin identity provider", err)
		}
		ev.Detail["token_sha256"] = broker.TokenHash(bearer)
		return deny("unknown", "admin token rejected: "+err.Error(), broker.Unauthenticated(err))
	}
	return a.authorize(ctx, ev, p, need, action, deny)
}

// RoleOfSignedIn applies the role rules to a signed-in admin, as
// AuthorizeSignedIn does, but audits only a refusal: for the console's
// polls (the live view every 2 s, a job's progress bar), whose page was
// audited when it was opened. An allowed poll would otherwise write an
// audit event every 2 s for every open console.
func (a *Admin) RoleOfSignedIn(ctx context.Context, p broker.Principal, need Role, action string) (AdminPrincipal, error) {
	return a.AuthorizeSignedIn(context.WithValue(ctx, quietKey{}, true), p, need, action)
}

// quietKey marks a context whose allowed admin attempt is not audited.
type quietKey struct{}

// AuthorizeSignedIn is Authorize for an admin whose ID token a sign-in at
// an admin issuer has verified already (the web console's session): the
// same role rules over the same claims, and the same audit of every
// attempt. p.Issuer is the configured name of that admin issuer.
func (a *Admin) AuthorizeSignedIn(ctx context.Context, p broker.Principal, need Role, action string) (AdminPrincipal, error) {
	ev := a.core.TaskEvent(ctx, "admin."+action, "", broker.Task{})
	ev.Detail = map[string]any{"required_role": need.String(), "via": "console"}
	deny := func(actor, reason string, e *broker.Error) (AdminPrincipal, error) {
		ev.Actor, ev.Outcome, ev.Reason = actor, "denied", reason
		if err := a.audit.Record(ctx, ev); err != nil {
			a.log.ErrorContext(ctx, "audit write of a denied admin request failed", "err", err)
		}
		a.log.WarnContext(ctx, "admin request denied", "action", action, "actor", actor, "reason", reason)
		return AdminPrincipal{}, e
	}
	if p.Issuer == "" || p.Subject == "" {
		return deny("unknown", "no signed-in admin", broker.Unauthenticated(errors.New("no signed-in admin")))
	}
	return a.authorize(ctx, ev, p, need, action, deny)
}

// authorize maps an authenticated admin to a role, requires need, and
// audits the allowed attempt (deny audits a refused one).
func (a *Admin) authorize(ctx context.Context, ev broker.Event, p broker.Principal, need Role, action string,
	deny func(actor, reason string, e *broker.Error) (AdminPrincipal, error)) (AdminPrincipal, error) {
	ap := AdminPrincipal{Issuer: p.Issuer, Subject: p.Subject}
	for _, r := range a.roles {
		if ok, _ := r.cond.Eval(map[string]any{"claims": p.Claims}); ok {
			ap.Role = r.role
			break
		}
	}
	ev.Issuer = p.Issuer
	ev.Detail["role"] = ap.Role.String()
	if ap.Role < need {
		return deny(ap.Actor(), fmt.Sprintf("role %s is below %s", ap.Role, need),
			&broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf("this action needs the %s role", need), Rule: "role"})
	}
	ev.Actor, ev.Outcome = ap.Actor(), "allowed"
	if quiet, _ := ctx.Value(quietKey{}).(bool); quiet {
		return ap, nil
	}
	if err := a.audit.Record(ctx, ev); err != nil {
		return AdminPrincipal{}, broker.Unavailable("the audit log", err)
	}
	return ap, nil
}
