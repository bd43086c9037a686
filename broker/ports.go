package broker

import (
	"context"
	"time"
)

// Authenticator verifies an identity token from a trusted OIDC issuer: an
// agent's bearer token, the subject_token of the user an agent acts for, or
// (given to Admin, trusting only the admin issuers) an admin's. Package
// identity implements it. Implementations must be safe for concurrent use. Errors wrapping
// ErrUnavailable mean the issuer could not be reached (the caller answers
// 503); any other error means the token is not acceptable (401).
type Authenticator interface {
	Authenticate(ctx context.Context, rawToken string) (Principal, error)
}

// Issuer mints one kind of credential for a task and kills it at its source.
// Implementations must be safe for concurrent use.
//
// An issuer may also have two optional abilities, which the Service finds
// by asserting them on the issuers it was given: SourceInventory
// (package reconcile), listing what is live at its source so the reconciler can
// revoke what the ledger does not know, and TokenRecognizer (revoke.go),
// telling RFC 7009 revocation which tokens are its own. They are optional
// because an issuer legitimately may or may not support them (Vault lists
// its tokens; a JWT cannot be listed).
type Issuer interface {
	Kind() CredentialKind
	// Mint issues the credentials of this kind that grant asks for (none is
	// a valid answer). Every credential must expire by itself at or before
	// task.Deadline. On error nothing it made may stay live: the issuer
	// revokes what it created before returning.
	Mint(ctx context.Context, task Task, p Principal, g Grant) ([]Minted, error)
	// Revoke kills c at its source. Revoking a credential that is already
	// gone returns nil. An error wrapping ErrUnavailable is worth retrying.
	Revoke(ctx context.Context, c Credential) error
}

// SourceInventory is implemented by issuers that can list what they made
// that is still live at their source, so the reconciler (package
// reconcile) can find credentials the ledger does not know (the broker
// died between minting and recording, or Redis lost the record).
// Implementations must be safe for concurrent use; errors wrap
// ErrUnavailable when the source is down.
type SourceInventory interface {
	// Live lists the credentials live at the source that carry a Valet
	// task id, with ID, Kind, TaskID, IssuedAt and ExpiresAt set.
	Live(ctx context.Context) ([]Credential, error)
}

// OtherKinds is implemented by an Issuer that also revokes credentials of
// kinds other than its Kind that it mints (the Vault issuer's database
// leases), so the Service revokes and retries those through it too.
type OtherKinds interface {
	AlsoRevokes() []CredentialKind
}

// OutlivesExpiry is implemented by an Issuer some of whose credentials can
// stay live at their source after the expiry Valet recorded (a database
// login whose revocation failed lives until the database drops it). Their
// failed revocations are retried past that expiry, until Revoke succeeds.
type OutlivesExpiry interface {
	OutlivesExpiry(c Credential) bool
}

// TaskClaims are the verified claims of a Valet-minted task token.
type TaskClaims struct {
	ID        string // jti
	TaskID    string
	Subject   string
	Template  string
	Tools     []string
	Audience  []string
	Scope     string
	ClientID  string
	IssuedAt  time.Time
	ExpiresAt time.Time
	// Act is the RFC 8693 actor chain, current actor first (empty when the
	// subject acts itself).
	Act []string
	// JKT is the cnf.jkt of a DPoP-bound token, or "".
	JKT string
	// AgentIssuer is the configured name of the issuer that vouched for
	// the agent (claim agent_issuer).
	AgentIssuer string

	// ActionTools are the sensitive tools the task may ask action tokens
	// for (claim action_tools): granted and attenuated like any tool, but
	// never in Tools, so no tool server accepts them without an action
	// token.
	ActionTools []string
}

// Actor is the agent that holds the token: the current actor of the act
// chain, or the subject.
func (c TaskClaims) Actor() string {
	if len(c.Act) > 0 {
		return c.Act[0]
	}
	return c.Subject
}

// TaskTokens is the issuer of Valet's own task JWTs, which can also verify
// what it minted.
type TaskTokens interface {
	Issuer
	// Verify checks a task token's signature, type, issuer and expiry and
	// returns its claims. It never consults the ledger.
	Verify(raw string) (TaskClaims, error)
}

// Ledger is the record of every task and credential that Valet handed out.
// Implementations must be safe for concurrent use by several brokers at once
// (the Redis ledger is shared by replicas). Errors wrap ErrNotFound,
// ErrNotActive or ErrUnavailable where those apply.
type Ledger interface {
	// Record stores a new active task and its credentials in one atomic
	// write. Every record it writes expires by itself after the task's
	// deadline plus the ledger's retention.
	Record(ctx context.Context, t Task, creds []Credential) error
	// Task returns a task and its credentials.
	Task(ctx context.Context, id string) (Task, []Credential, error)
	// End moves an active task to the final state given and puts all its
	// credentials on the deny list, atomically. Of concurrent calls exactly
	// one succeeds; the others get ErrNotActive together with the task as
	// it is stored.
	End(ctx context.Context, id string, state State, reason string, at time.Time) (Task, []Credential, error)
	// Credential returns a credential's record and whether it is on the deny
	// list, in one round trip. Unknown ids give ErrNotFound.
	Credential(ctx context.Context, id string) (Credential, bool, error)
	// Due lists up to limit active tasks whose deadline is at or before now.
	Due(ctx context.Context, now time.Time, limit int) ([]string, error)
	// Ping reports whether the ledger is reachable.
	Ping(ctx context.Context) error
	// Children lists the ids of the tasks delegated from task id (its
	// direct children), in no particular order. A task with none, or one
	// whose records are gone, has an empty list.
	//
	// Record of a task with a Parent adds it to the parent's children in
	// the same atomic write, and refuses it with ErrNotActive if the parent
	// is not active at that moment, so a child is either listed before its
	// parent ends or never recorded at all.
	Children(ctx context.Context, id string) ([]string, error)
	// Renew moves active task id's deadline from from (as recorded, to the
	// millisecond) to the later to and adds creds to it, in one atomic
	// write; the task's records, indexes and deadline index follow the new
	// deadline. A task that is no longer active gives ErrNotActive, one
	// whose deadline is no longer from (another renewal won) ErrConflict,
	// both with the task as stored; nothing is written then.
	Renew(ctx context.Context, id string, from, to time.Time, creds []Credential) (Task, error)
	// DueEnder is how the reaper ends tasks past their deadline.
	DueEnder
	// ManyEnder is how bulk revocation ends tasks in batches.
	ManyEnder
}

// MaxEndMany is the most tasks one EndMany call takes, and
// MaxEndManyCredentials the most credentials a caller that knows its
// tasks' credentials puts in one call (a task with more goes alone): a
// batch script's time grows with both (each credential is a deny entry and,
// for a JWT, a feed entry), and it must hold Redis for milliseconds, not
// for the half second after which other callers time out.
const (
	MaxEndMany            = 256
	MaxEndManyCredentials = 1024
)

// ManyEnder ends many tasks at once (bulk revocation jobs). EndMany does
// to each of ids what End does (final state, reason, ended at at, every
// credential denied and each JWT on the revocation feed), each task
// atomically and all in one round trip, and answers one EndResult per id,
// in order. Of concurrent calls (and End) exactly one ends each task. At
// most MaxEndMany ids; an error means none of them was ended, or, for an
// error from the store, that it cannot be known which were (every retry
// is safe: a task is ended once).
type ManyEnder interface {
	EndMany(ctx context.Context, ids []string, state State, reason string, at time.Time) ([]EndResult, error)
}

// EndOutcome is what EndMany found for one task.
type EndOutcome string

const (
	EndedNow       EndOutcome = "ended"      // it was active and is ended now
	EndedNotActive EndOutcome = "not_active" // it had ended before: Task is as stored
	EndedNotFound  EndOutcome = "not_found"  // no records (never, or expired)
)

// EndResult is one task of an EndMany: the task and its credentials as
// stored (empty when not found), the ids of its direct children, and, once
// the broker has revoked what has a source, how many of its credentials
// could not be (Failed; they wait in the retry queue).
type EndResult struct {
	Outcome  EndOutcome
	Task     Task
	Creds    []Credential
	Children []string
	Failed   int
}

// Event is one audit record. It carries ids, never secrets.
type Event struct {
	Time      time.Time      `json:"time"`
	Type      string         `json:"type"`
	RequestID string         `json:"request_id,omitempty"`
	Actor     string         `json:"actor,omitempty"` // who caused it: agent, admin, "reaper"
	Issuer    string         `json:"issuer,omitempty"`
	TaskID    string         `json:"task_id,omitempty"`
	Template  string         `json:"template,omitempty"`
	Outcome   string         `json:"outcome,omitempty"` // granted, denied, ...
	Rule      string         `json:"rule,omitempty"`
	Reason    string         `json:"reason,omitempty"`
	Creds     []string       `json:"credentials,omitempty"` // ids: jti, accessor, lease id
	Detail    map[string]any `json:"detail,omitempty"`
	// Chained, when set, is the audit chain that holds this event already
	// (a GrantRecorder wrote it with the records it is about); that
	// chain's auditor skips it. It is never written.
	Chained any `json:"-"`
}

// GrantRecorder is a Ledger that can write a grant's audit event into one
// of the auditors' chains in the same atomic write as the task's records,
// so that a declaration takes one round trip to the ledger's store.
// RecordGranted is Record plus that: chain is the chain that now holds ev
// (the broker sets it as ev.Chained before auditing ev everywhere else), or
// nil when ev was written nowhere. An error means neither the records nor
// the event were written, or that what was written is being undone, as
// for Record. Implementations must be safe for concurrent use.
type GrantRecorder interface {
	RecordGranted(ctx context.Context, t Task, creds []Credential, ev Event) (chain any, err error)
}

// Auditor writes audit events. Record returns only once the event is
// written; an error means the action that caused the event must fail.
// Implementations must be safe for concurrent use.
type Auditor interface {
	Record(ctx context.Context, e Event) error
}

// EndedTask is a task a DueEnder ended, with its credentials and the id of
// the batch it was ended in.
type EndedTask struct {
	Task  Task
	Creds []Credential
	Batch string
}

// ReapedBatch is a batch of ended tasks whose audit record was not
// acknowledged within its lease (the reaper that ended it stopped).
type ReapedBatch struct {
	ID                 string
	Tasks, Credentials []string
	EndedAt            time.Time
}

// DueEnder is the reaper's part of a Ledger: it ends due tasks in batches.
// EndDue takes up to limit active tasks whose deadline is at or before now
// and ends each (state expired, reason, ended at now, credentials denied)
// in one atomic step, so concurrent callers (replicas' reapers) never get
// the same task. Tasks whose records expired are dropped silently.
//
// Each batch waits under a lease until AckReaped says its audit record is
// written; Unaudited claims (re-leases) batches whose lease expired, so a
// surviving replica writes the record of a batch whose reaper died.
type DueEnder interface {
	EndDue(ctx context.Context, now time.Time, limit int, reason string) ([]EndedTask, error)
	AckReaped(ctx context.Context, batch string) error
	Unaudited(ctx context.Context, now time.Time) ([]ReapedBatch, error)
}
