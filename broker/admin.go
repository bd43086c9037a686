package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

// AdminConfig wires the admin side. Identity must trust only the admin
// issuers (never the agents'); Roles maps role names to CEL over `claims`.
type AdminConfig struct {
	Identity Authenticator
	Roles    map[string]string
	Service  *Service
	Controls ControlStore
	Jobs     JobStore
	Epochs   EpochStore
	Timeline TimelineReader
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
	// Rollback says which undo webhooks `valet tasks rollback` may call.
	Rollback RollbackConfig
}

// Admin is the incident-response API: bulk revocation, controls, and the
// task trail. It is safe for concurrent use.
type Admin struct {
	identity Authenticator
	roles    []roleRule
	svc      *Service
	controls ControlStore
	jobs     JobStore
	epochs   EpochStore
	timeline TimelineReader
	issuers  []string
	lease    time.Duration
	inline   time.Duration
	batch    int
	owner    string
	log      *slog.Logger
	rollback RollbackConfig

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
func NewAdmin(cfg AdminConfig) (*Admin, error) {
	var missing []string
	for _, m := range []struct {
		name string
		nil  bool
	}{{"identity", cfg.Identity == nil}, {"service", cfg.Service == nil}, {"controls", cfg.Controls == nil},
		{"jobs", cfg.Jobs == nil}, {"epochs", cfg.Epochs == nil}, {"timeline", cfg.Timeline == nil}} {
		if m.nil {
			missing = append(missing, m.name)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("admin: %s cannot be nil", strings.Join(missing, ", "))
	}
	a := &Admin{
		identity: cfg.Identity, svc: cfg.Service, controls: cfg.Controls, jobs: cfg.Jobs, epochs: cfg.Epochs,
		timeline: cfg.Timeline, issuers: cfg.AgentIssuers, lease: cfg.JobLease, inline: cfg.InlineBudget,
		owner: NewID("brk"), log: cfg.Logger, base: context.Background(), running: map[string]bool{},
		rollback: cfg.Rollback,
	}
	a.rollback.init()
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
	return a, nil
}

// Authorize verifies an admin token and requires role need for action.
// Every attempt, allowed or not, is audited; an allowed attempt whose audit
// write fails is refused (no audit, no action).
func (a *Admin) Authorize(ctx context.Context, bearer string, need Role, action string) (AdminPrincipal, error) {
	ev := a.svc.TaskEvent(ctx, "admin."+action, "", Task{})
	ev.Detail = map[string]any{"required_role": need.String()}
	deny := func(actor, reason string, e *Error) (AdminPrincipal, error) {
		ev.Actor, ev.Outcome, ev.Reason = actor, "denied", reason
		if err := a.svc.audit.Record(ctx, ev); err != nil {
			a.log.ErrorContext(ctx, "audit write of a denied admin request failed", "err", err)
		}
		a.log.WarnContext(ctx, "admin request denied", "action", action, "actor", actor, "reason", reason)
		return AdminPrincipal{}, e
	}
	if bearer == "" {
		return deny("unknown", "no bearer token", Unauthenticated(errors.New("no bearer token")))
	}
	p, err := a.identity.Authenticate(ctx, bearer)
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			return AdminPrincipal{}, Unavailable("the admin identity provider", err)
		}
		ev.Detail["token_sha256"] = TokenHash(bearer)
		return deny("unknown", "admin token rejected: "+err.Error(), Unauthenticated(err))
	}
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
			&Error{Code: CodeForbidden, Message: fmt.Sprintf("this action needs the %s role", need), Rule: "role"})
	}
	ev.Actor, ev.Outcome = ap.Actor(), "allowed"
	if err := a.svc.audit.Record(ctx, ev); err != nil {
		return AdminPrincipal{}, Unavailable("the audit log", err)
	}
	return ap, nil
}

// DryRun is what a revocation would cover.
type DryRun struct {
	Tasks   int      `json:"tasks_matched"`
	Matched int      `json:"matched"`
	Sample  []string `json:"sample"`
}

const (
	jobBatch   = 500
	sampleSize = 10
)

// DryRun counts what sel covers now, changing nothing.
func (a *Admin) DryRun(ctx context.Context, sel Selector) (DryRun, error) {
	if err := sel.Validate(); err != nil {
		return DryRun{}, err
	}
	var out DryRun
	out.Sample = []string{}
	cursor := ""
	for {
		ids, next, err := a.jobs.Candidates(ctx, sel, cursor, jobBatch)
		if err != nil {
			return DryRun{}, Unavailable("the credential ledger", err)
		}
		tasks, creds, err := a.jobs.Tasks(ctx, ids)
		if err != nil {
			return DryRun{}, Unavailable("the credential ledger", err)
		}
		for i, t := range tasks {
			if t.State != StateActive || !sel.Matches(t) {
				continue
			}
			out.Tasks++
			out.Matched += len(creds[i])
			if len(out.Sample) < sampleSize {
				out.Sample = append(out.Sample, t.ID)
			}
		}
		if next == "" {
			return out, nil
		}
		cursor = next
	}
}

// Revoke starts a bulk revocation. When the selector is a pure agent,
// template or issuer cut, the matching epochs are set first, so every
// credential it covers is inactive at introspection before Revoke returns;
// the job then ends the tasks one by one (and kills Vault credentials at
// their source). The job runs inline for up to the inline budget and then
// in the background; it is recorded before any work, so a broker that dies
// leaves it for another (or itself, restarted) to resume.
func (a *Admin) Revoke(ctx context.Context, who AdminPrincipal, sel Selector, reason string) (RevocationJob, error) {
	if err := sel.Validate(); err != nil {
		return RevocationJob{}, err
	}
	if len(reason) > 1024 || !validName(reason) {
		return RevocationJob{}, &Error{Code: CodeInvalid, Message: "reason must be at most 1024 printable characters", Field: "reason"}
	}
	now := a.svc.now()
	if sel.IssuedBefore.IsZero() || sel.IssuedBefore.After(now) {
		sel.IssuedBefore = now
	}
	j := RevocationJob{ID: NewID("job"), State: JobRunning, Selector: sel, By: who.Actor(), Reason: reason, Created: now}
	j.Epochs = sel.epochs(a.issuers, now)
	if err := a.jobs.SaveJob(ctx, j); err != nil {
		return RevocationJob{}, Unavailable("the job store", err)
	}
	ev := a.svc.TaskEvent(ctx, "revocation.started", who.Actor(), Task{})
	ev.Reason = reason
	ev.Detail = map[string]any{"job_id": j.ID, "selector": sel, "epochs": len(j.Epochs)}
	if err := a.svc.audit.Record(ctx, ev); err != nil {
		return RevocationJob{}, Unavailable("the audit log", err)
	}
	for _, e := range j.Epochs {
		if err := a.epochs.SetEpoch(ctx, e); err != nil {
			// The job is recorded and will be resumed; but nothing may be
			// reported as revoked yet.
			return RevocationJob{}, Unavailable("the credential ledger", fmt.Errorf("setting epoch %s %s: %w", e.Dimension, e.Key, err))
		}
	}
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.inline)
	done, err := a.runJob(ictx, j.ID)
	cancel()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		a.log.ErrorContext(ctx, "revocation job interrupted; it will be resumed", "job_id", j.ID, "err", err)
	}
	if !done {
		a.background(j.ID)
	}
	return a.Job(ctx, j.ID)
}

// Job returns a job's progress.
func (a *Admin) Job(ctx context.Context, id string) (RevocationJob, error) {
	j, err := a.jobs.Job(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return RevocationJob{}, Errorf(CodeNotFound, "revocation job %q not found", id)
	case err != nil:
		return RevocationJob{}, Unavailable("the job store", err)
	}
	j.Pending = max(j.Matched-j.Revoked-j.Failed, 0)
	return j, nil
}

// Start makes ctx the life of every background job (a job started before
// Start runs until it is done) and, in a goroutine, resumes unfinished jobs
// now and every interval until ctx ends: jobs of a broker that died are
// taken over once its lease lapses.
func (a *Admin) Start(ctx context.Context, interval time.Duration) {
	a.mu.Lock()
	a.base = ctx
	a.mu.Unlock()
	go a.resumeLoop(ctx, interval)
}

func (a *Admin) resumeLoop(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ids, err := a.jobs.Unfinished(ctx)
		if err != nil && ctx.Err() == nil {
			a.log.ErrorContext(ctx, "listing unfinished revocation jobs", "err", err)
		}
		for _, id := range ids {
			a.background(id)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RunningJobs is how many jobs this broker is running now.
func (a *Admin) RunningJobs() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.running)
}

// FinishedJobs is how many jobs this broker has finished.
func (a *Admin) FinishedJobs() int64 { return a.done.Load() }

func (a *Admin) background(id string) {
	a.mu.Lock()
	if a.running[id] || a.base.Err() != nil {
		a.mu.Unlock()
		return
	}
	a.running[id] = true
	ctx := a.base
	a.mu.Unlock()
	go func() {
		defer func() {
			a.mu.Lock()
			delete(a.running, id)
			a.mu.Unlock()
		}()
		for ctx.Err() == nil {
			done, err := a.runJob(ctx, id)
			if done {
				return
			}
			if err != nil && ctx.Err() == nil {
				a.log.Error("revocation job interrupted; retrying", "job_id", id, "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(a.lease / 3):
			}
		}
	}()
}

// runJob works on job id until it is done, ctx ends or another broker
// holds it. Each batch is idempotent: ending a task twice is a no-op, and a
// task this job ended before a crash is counted again only in the batch
// that is redone.
func (a *Admin) runJob(ctx context.Context, id string) (bool, error) {
	j, err := a.jobs.Job(ctx, id)
	if err != nil {
		return false, err
	}
	if j.State == JobDone {
		return true, nil
	}
	for _, e := range j.Epochs {
		// Re-setting an epoch is harmless (it never moves back) and covers
		// a crash between saving the job and setting it.
		if err := a.epochs.SetEpoch(ctx, e); err != nil {
			return false, err
		}
	}
	reason := "bulk revocation " + j.ID
	for {
		ok, err := a.jobs.Lease(ctx, j.ID, a.owner, a.lease)
		if err != nil || !ok {
			return false, err
		}
		ids, next, err := a.jobs.Candidates(ctx, j.Selector, j.Cursor, a.batch)
		if err != nil {
			return false, err
		}
		tasks, creds, err := a.jobs.Tasks(ctx, ids)
		if err != nil {
			return false, err
		}
		b, err := a.revokeBatch(ctx, j, reason, tasks, creds)
		if err != nil {
			j.LastError = err.Error()
			_ = a.jobs.SaveJob(context.WithoutCancel(ctx), j)
			return false, err
		}
		j.Tasks, j.Matched, j.Revoked, j.Failed = j.Tasks+b.Tasks, j.Matched+b.Matched, j.Revoked+b.Revoked, j.Failed+b.Failed
		j.Cursor, j.LastError = next, ""
		if next == "" {
			j.State, j.Finished = JobDone, a.svc.now()
		}
		if err := a.jobs.SaveJob(context.WithoutCancel(ctx), j); err != nil {
			return false, err
		}
		if j.State == JobDone {
			a.done.Add(1)
			ev := a.svc.TaskEvent(ctx, "revocation.finished", j.By, Task{})
			ev.Detail = map[string]any{"job_id": j.ID, "tasks_matched": j.Tasks, "matched": j.Matched, "revoked": j.Revoked, "failed": j.Failed}
			if err := a.svc.audit.Record(ctx, ev); err != nil {
				a.log.ErrorContext(ctx, "audit write of a finished revocation job failed", "job_id", j.ID, "err", err)
			}
			a.log.InfoContext(ctx, "revocation job finished", "job_id", j.ID, "tasks", j.Tasks, "revoked", j.Revoked)
			return true, nil
		}
		if err := ctx.Err(); err != nil {
			return false, err
		}
	}
}

// revokeBatch ends every active matching task of one batch, a few at a
// time.
func (a *Admin) revokeBatch(ctx context.Context, j RevocationJob, reason string, tasks []Task, creds [][]Credential) (RevocationJob, error) {
	var (
		mu    sync.Mutex
		out   RevocationJob
		first error
		wg    sync.WaitGroup
		sem   = make(chan struct{}, jobParallelism)
	)
	// count adds a task's n credentials as revoked, as failed (ended and
	// denied, but killing some at their source failed and waits in the
	// retry queue), or as neither.
	count := func(n int, revoked, failed bool) {
		mu.Lock()
		out.Tasks++
		out.Matched += n
		switch {
		case revoked:
			out.Revoked += n
		case failed:
			out.Failed += n
		}
		mu.Unlock()
	}
	for i, t := range tasks {
		if !j.Selector.Matches(t) {
			continue
		}
		if t.State != StateActive {
			if t.State == StateRevoked && t.EndReason == reason {
				count(len(creds[i]), true, false) // ended by this job before it was interrupted
			}
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(t Task) {
			defer func() { <-sem; wg.Done() }()
			ended, cs, err := a.svc.end(context.WithoutCancel(ctx), t.ID, StateRevoked, reason, j.By)
			switch {
			case err == nil:
				count(len(cs), true, false)
			case errors.Is(err, ErrRevocationPending):
				count(len(cs), false, true)
			case errors.Is(err, ErrNotActive):
				// Ended by this job: directly, or through the cascade of
				// an ancestor the job ended first (a delegated child the
				// selector covers too, with the ancestor's end reason;
				// the ledger keeps end times in milliseconds).
				if ended.State == StateRevoked && (ended.EndReason == reason || !ended.EndedAt.Before(j.Created.Truncate(time.Millisecond))) {
					count(len(creds[i]), true, false)
				}
			case ErrorCode(err) == CodeNotFound:
			default:
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}(t)
	}
	wg.Wait()
	return out, first
}

// Controls lists the controls in force.
func (a *Admin) Controls(ctx context.Context) ([]Control, error) {
	cs, err := a.controls.List(ctx)
	if err != nil {
		return nil, Unavailable("the control store", err)
	}
	return cs, nil
}

// PutControl sets a control; with revoke, it also revokes the live tasks
// the control covers and returns that job. A target Valet does not know
// (no such template, no such configured issuer, an agent with no task in
// the ledger) is refused unless force. Setting a control again without a
// reason keeps the reason it had.
func (a *Admin) PutControl(ctx context.Context, who AdminPrincipal, c Control, revoke, force bool) (Control, *RevocationJob, error) {
	if err := c.Validate(); err != nil {
		return Control{}, nil, err
	}
	if !validName(c.Target) || !validName(c.Issuer) || !validName(c.Reason) {
		return Control{}, nil, &Error{Code: CodeInvalid, Message: "target, issuer and reason must be printable", Field: "target"}
	}
	if !force {
		if err := a.knownTarget(ctx, c); err != nil {
			return Control{}, nil, err
		}
	}
	if c.Reason == "" {
		cs, err := a.controls.List(ctx)
		if err != nil {
			return Control{}, nil, Unavailable("the control store", err)
		}
		for _, old := range cs {
			if old.ID() == c.ID() {
				c.Reason = old.Reason
			}
		}
	}
	c.By, c.At = who.Actor(), a.svc.now().UTC()
	ev := a.svc.TaskEvent(ctx, "control.set", who.Actor(), Task{})
	ev.Reason = c.Reason
	ev.Detail = map[string]any{"control": c.ID(), "kind": c.Kind, "target": c.Target, "issuer": c.Issuer, "revoke": revoke}
	if err := a.svc.audit.Record(ctx, ev); err != nil {
		return Control{}, nil, Unavailable("the audit log", err)
	}
	if err := a.controls.Put(ctx, c); err != nil {
		return Control{}, nil, Unavailable("the control store", err)
	}
	if !revoke {
		return c, nil, nil
	}
	var sel Selector
	switch c.Kind {
	case ControlFreezeAgent:
		sel = Selector{Agent: c.Target, Issuer: c.Issuer}
	case ControlQuarantineTemplate:
		sel = Selector{Template: c.Target}
	case ControlDistrustIssuer:
		sel = Selector{Issuer: c.Target}
	}
	j, err := a.Revoke(ctx, who, sel, "control "+c.ID()+": "+c.Reason)
	if err != nil {
		return c, nil, err
	}
	return c, &j, nil
}

// knownTarget refuses a control over a name Valet does not know, which is
// most often a typo that would otherwise look like a control in force.
func (a *Admin) knownTarget(ctx context.Context, c Control) error {
	unknown := func(format string, args ...any) error {
		return &Error{Code: CodeNotFound, Message: fmt.Sprintf(format, args...) + " (set force to set the control anyway)", Field: "target"}
	}
	if c.Issuer != "" && !slices.Contains(a.issuers, c.Issuer) {
		return unknown("no agent issuer is named %q", c.Issuer)
	}
	switch c.Kind {
	case ControlQuarantineTemplate:
		if _, ok := a.svc.Templates().Get(c.Target); !ok {
			return unknown("no template is named %q", c.Target)
		}
	case ControlDistrustIssuer:
		if !slices.Contains(a.issuers, c.Target) {
			return unknown("no agent issuer is named %q", c.Target)
		}
	case ControlFreezeAgent:
		ids, _, err := a.jobs.Candidates(ctx, Selector{Agent: c.Target, Issuer: c.Issuer}, "", 1)
		if err != nil {
			return Unavailable("the credential ledger", err)
		}
		if len(ids) == 0 {
			return unknown("agent %q has no task in the ledger", c.Target)
		}
	}
	return nil
}

// DeleteControl lifts a control (reinstate).
func (a *Admin) DeleteControl(ctx context.Context, who AdminPrincipal, c Control) error {
	ev := a.svc.TaskEvent(ctx, "control.lifted", who.Actor(), Task{})
	ev.Detail = map[string]any{"control": c.ID()}
	if err := a.svc.audit.Record(ctx, ev); err != nil {
		return Unavailable("the audit log", err)
	}
	ok, err := a.controls.Delete(ctx, c)
	if err != nil {
		return Unavailable("the control store", err)
	}
	if !ok {
		return Errorf(CodeNotFound, "no control %s", c.ID())
	}
	return nil
}

// TaskFilter narrows GET /v1/admin/tasks.
type TaskFilter struct {
	Agent, Issuer, Template string
	State                   State
	Limit                   int
	// Cursor is the NextCursor of the previous page ("" for the first).
	Cursor string
}

// maxTaskListing bounds the tasks one listing reads from the ledger.
const maxTaskListing = 10000

// Tasks is the first page of TaskPage.
func (a *Admin) Tasks(ctx context.Context, f TaskFilter) ([]Task, error) {
	ts, _, err := a.TaskPage(ctx, f)
	return ts, err
}

// TaskPage lists the tasks that match f, newest first: by created_at,
// then id, both descending. A page holds at most f.Limit (1 to 1000,
// default 100); next is set when more match. One listing reads at most
// maxTaskListing tasks of the ledger.
func (a *Admin) TaskPage(ctx context.Context, f TaskFilter) (page []Task, next string, err error) {
	if f.Limit <= 0 || f.Limit > 1000 {
		f.Limit = 100
	}
	after, err := parseTaskCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	sel := Selector{Agent: f.Agent, Issuer: f.Issuer, Template: f.Template}
	var all []Task
	seen := map[string]bool{} // the index walk may return a task twice
	for cursor, read := "", 0; read < maxTaskListing; {
		ids, next, err := a.jobs.Candidates(ctx, sel, cursor, jobBatch)
		if err != nil {
			return nil, "", Unavailable("the credential ledger", err)
		}
		read += len(ids)
		tasks, _, err := a.jobs.Tasks(ctx, ids)
		if err != nil {
			return nil, "", Unavailable("the credential ledger", err)
		}
		for _, t := range tasks {
			if !seen[t.ID] && sel.Matches(t) && (f.State == "" || t.State == f.State) && (after == nil || taskBefore(*after, t)) {
				seen[t.ID] = true
				all = append(all, t)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	slices.SortFunc(all, func(x, y Task) int {
		if taskBefore(x, y) {
			return -1
		}
		return 1
	})
	if len(all) > f.Limit {
		last := all[f.Limit-1]
		return all[:f.Limit], base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(last.CreatedAt.UnixNano(), 10) + " " + last.ID)), nil
	}
	if all == nil {
		all = []Task{}
	}
	return all, "", nil
}

// taskBefore reports whether x comes before y in a listing: newer
// created_at first, then the greater id.
func taskBefore(x, y Task) bool {
	if !x.CreatedAt.Equal(y.CreatedAt) {
		return x.CreatedAt.After(y.CreatedAt)
	}
	return x.ID > y.ID
}

// parseTaskCursor reads a TaskPage cursor: the sort key of the last task
// of the page before.
func parseTaskCursor(c string) (*Task, error) {
	if c == "" {
		return nil, nil
	}
	bad := &Error{Code: CodeInvalid, Message: "cursor is not one Valet gave", Field: "cursor"}
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, bad
	}
	ns, id, ok := strings.Cut(string(raw), " ")
	n, err := strconv.ParseInt(ns, 10, 64)
	if !ok || err != nil || id == "" {
		return nil, bad
	}
	return &Task{ID: id, CreatedAt: time.Unix(0, n)}, nil
}

// TaskDetail returns a task and its credential records (ids only).
func (a *Admin) TaskDetail(ctx context.Context, id string) (Task, []Credential, error) {
	t, cs, err := a.svc.ledger.Task(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return Task{}, nil, Errorf(CodeNotFound, "task %q not found", id)
	case err != nil:
		return Task{}, nil, Unavailable("the credential ledger", err)
	}
	return t, cs, nil
}

// Timeline returns the audit events of a task, in order.
func (a *Admin) Timeline(ctx context.Context, id string) ([]Event, error) {
	evs, err := a.timeline.Timeline(ctx, id)
	if err != nil {
		return nil, Unavailable("the audit stream", err)
	}
	if len(evs) == 0 {
		return nil, Errorf(CodeNotFound, "no audit events for task %q", id)
	}
	return evs, nil
}

// jobParallelism is how many tasks a revocation job ends at once. Each end
// is one ledger script and one audit event; with the audit log's group
// commit, more in flight means fewer fsyncs per task.
const jobParallelism = 32
