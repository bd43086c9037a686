package broker

import (
	"time"

	"github.com/valet-dev/valet/policy"
)

// State is where a task is in its life. Only StateActive tasks have live
// credentials; every other state is final.
type State string

const (
	StateActive    State = "active"
	StateCompleted State = "completed" // the agent said it is done
	StateExpired   State = "expired"   // the deadline passed (the reaper ended it)
	StateRevoked   State = "revoked"   // someone revoked it (RFC 7009, a responder)
)

// Final reports whether s is an end state.
func (s State) Final() bool { return s != StateActive }

// Principal is a verified caller: the agent, as its identity token names it.
type Principal struct {
	// Issuer is the configured name of the trusted issuer that vouched for
	// the token (not its URL), so templates survive an IdP move.
	Issuer string `json:"issuer"`
	// IssuerURL is the token's exact iss.
	IssuerURL string `json:"issuer_url"`
	// Subject is the value of the issuer's agent claim: the agent's name.
	Subject string `json:"subject"`
	// Claims are all verified claims of the identity token, for policy.
	Claims map[string]any `json:"-"`
	// TokenExpiry is the identity token's exp.
	TokenExpiry time.Time `json:"-"`
}

// PolicyIdentity is p as template rules and conditions see it.
func (p Principal) PolicyIdentity() policy.Identity {
	return policy.Identity{Issuer: p.Issuer, IssuerURL: p.IssuerURL, Subject: p.Subject, Claims: p.Claims}
}

// Declaration is what an agent asks for in POST /v1/tasks.
type Declaration struct {
	Template string         `json:"template"`
	Intent   string         `json:"intent"`
	Tools    []string       `json:"tools"`
	TTL      time.Duration  `json:"-"`
	Context  map[string]any `json:"context,omitempty"`
	// Proof is the request's DPoP header, if any; Method and URL are what
	// it must name. Set by the HTTP layer, never decoded from the body.
	Proof       string `json:"-"`
	Method, URL string `json:"-"`
	// SubjectToken is the end user's identity token when the agent acts on
	// a user's behalf (see onbehalf.go); User is that token once verified,
	// set by Declare. Neither is ever logged or stored.
	SubjectToken string     `json:"-"`
	User         *Principal `json:"-"`
	// Resources, when set, are the RFC 8707 resource indicators of an
	// OAuth token request: the task token's audiences are exactly these,
	// each of which the template must list (else a 403 by rule
	// "audience"). Never decoded from a declaration body.
	Resources []string `json:"-"`
}

// Task is one unit of agent work and the root of every credential issued for
// it. Credentials never outlive Deadline.
type Task struct {
	ID        string    `json:"id"`
	State     State     `json:"state"`
	Agent     string    `json:"agent"`
	Issuer    string    `json:"issuer"`
	Template  string    `json:"template"`
	Intent    string    `json:"intent"`
	Tools     []string  `json:"tools"`
	CreatedAt time.Time `json:"created_at"`
	Deadline  time.Time `json:"deadline"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
	EndReason string    `json:"end_reason,omitempty"`

	// Delegation (see delegation.go). A root task has no Parent, Depth 0.
	Parent string `json:"parent,omitempty"`
	Root   string `json:"root,omitempty"`
	Depth  int    `json:"depth,omitempty"`
	// Subject is the token's sub when it is not Agent: the root agent of a
	// delegation tree, or the user a task acts on behalf of.
	Subject string `json:"subject,omitempty"`
	// SubjectIssuer is the configured name of the issuer that vouched for
	// Subject when it is a user (an on-behalf-of task), else "".
	SubjectIssuer string `json:"subject_issuer,omitempty"`
	// Act is the RFC 8693 actor chain, current actor first: Agent, then
	// the agents that delegated to it. Empty for a root task.
	Act []string `json:"act,omitempty"`
	// JKT is the RFC 7638 thumbprint of the DPoP key the task's tokens are
	// bound to (RFC 9449 cnf.jkt), or "".
	JKT string `json:"jkt,omitempty"`
	// Chain is every agent the task's authority passed through, root
	// agent first and Agent last, each with the issuer that vouched for
	// it. Incident controls and revoked-before epochs apply to all of them
	// (see gate.go). Empty in records written before it existed: Links
	// then derives it.
	Chain []Link `json:"chain,omitempty"`

	// Audiences and Scopes are what the task's tokens were granted (the
	// grant's), kept so a renewal re-mints no more than that. Empty in
	// records written before renewal existed, which cannot be renewed.
	// Not part of the task's JSON answer.
	Audiences []string `json:"-"`
	Scopes    []string `json:"-"`
}

// Link is one principal of a task's chain: an agent (or the user a task
// acts for) and the configured name of the issuer that vouched for it.
type Link struct {
	Agent  string `json:"agent"`
	Issuer string `json:"issuer"`
}

// Links are every principal a task acts for or through: its chain (root
// agent first, then each sub-agent, ending with Agent) and, last, the user
// of an on-behalf-of task. The gate checks controls and epochs of each;
// bulk revocation selects a task by any of them.
func (t Task) Links() []Link {
	out := t.Agents()
	if t.SubjectIssuer != "" && t.Subject != "" {
		out = append(out, Link{Agent: t.Subject, Issuer: t.SubjectIssuer})
	}
	return out
}

// Agents is the task's chain without the user: Chain, or what an older
// record names.
func (t Task) Agents() []Link {
	var out []Link
	if len(t.Chain) > 0 {
		out = append(out, t.Chain...)
	} else {
		// A record from before Chain: the agents it names, under the
		// task's issuer (the only one it recorded).
		if t.Subject != "" && t.SubjectIssuer == "" && t.Subject != t.Agent {
			out = append(out, Link{Agent: t.Subject, Issuer: t.Issuer})
		}
		for i := len(t.Act) - 1; i >= 1; i-- {
			out = append(out, Link{Agent: t.Act[i], Issuer: t.Issuer})
		}
		out = append(out, Link{Agent: t.Agent, Issuer: t.Issuer})
	}
	return out
}

// CredentialKind names an issuer. It is stored in the ledger, so values are
// stable strings.
type CredentialKind string

const (
	KindJWT        CredentialKind = "jwt"
	KindVaultToken CredentialKind = "vault_token"
	KindVaultLease CredentialKind = "vault_lease"
)

// Credential is the ledger's record of an issued credential: ids only. The
// secret itself is never stored or logged.
type Credential struct {
	// ID identifies the credential at its source: a JWT's jti, a Vault
	// token's accessor, a Vault lease id.
	ID     string         `json:"id"`
	Kind   CredentialKind `json:"kind"`
	TaskID string         `json:"task_id"`
	// Parent is the credential whose revocation also kills this one at the
	// source (a lease under a Vault token), if any.
	Parent    string    `json:"parent,omitempty"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Minted is a credential as an issuer hands it over: the ledger record plus
// the material for the client. Material goes into the HTTP answer and nowhere
// else.
type Minted struct {
	Credential
	// Material is what the client receives (a token string, a
	// username/password pair, a wrapping token). Never logged.
	Material map[string]any
}

// Grant is the outcome of policy for one declaration: what the task may do.
type Grant struct {
	Template  *policy.Template
	Tools     []string
	TTL       time.Duration
	Audiences []string
	Scopes    []string

	// ActionTools are the granted sensitive tools (TaskClaims.ActionTools);
	// Tools are the others, which go into the task token's tools.
	ActionTools []string
}
