package policy

import (
	"path"
	"slices"
	"time"
)

// Template is what an ops team writes: who may use it, for how long, which
// tools, what goes into the token, and the conditions a declaration must
// meet. Templates are immutable once loaded; a reload builds a new set.
type Template struct {
	Name        string
	Description string
	// Source is the file the template came from, for error messages.
	Source     string
	Principals []PrincipalRule
	// Users admits end users a task may act on behalf of (subject_token in
	// the declaration); none means no task of this template may.
	Users      []PrincipalRule
	DefaultTTL time.Duration
	MaxTTL     time.Duration
	// MaxLifetime bounds a task's whole life, renewals included: no
	// renewal moves its deadline past CreatedAt + MaxLifetime. It is
	// ttl.max_lifetime, MaxTTL when not given, and never less than MaxTTL.
	MaxLifetime time.Duration
	// Tools is the allowlist: exact names and "prefix.*" patterns.
	Tools      []string
	Audiences  []string
	Scopes     []string
	Conditions []Condition
	// Delegation allows token exchange to sub-agents; nil forbids it.
	Delegation *DelegationPolicy
	// Budgets cap what one task tree may do; zero means no cap.
	Budgets Budgets
	// Sensitive are the tools used only through action tokens (see
	// sensitive.go); none of them is ever put in a task token.
	Sensitive []SensitiveTool
	// Vault, when set, asks for Vault credentials per task.
	Vault *VaultSpec
	// Upstreams are the HTTP services `valet proxy` calls for the
	// template's tasks (secretless mode); see upstreams.go.
	Upstreams []Upstream
	// Postgres, when set, is how the proxy's PostgreSQL listener serves
	// the template's tasks (an upstreams entry with a postgres block).
	Postgres *PostgresUpstream
}

// PrincipalRule admits principals from one trusted issuer (by its configured
// name), optionally narrowed by a CEL condition over the token's claims.
type PrincipalRule struct {
	Issuer    string
	Condition *Condition
}

// AllowsTool reports whether name is on the template's allowlist. A pattern
// "prefix.*" matches any name that starts with "prefix." and has something
// after it; nothing else is a wildcard.
func (t *Template) AllowsTool(name string) bool {
	if !ValidToolName(name) { // "kb.*" or "kb..x" must never match "kb.*"
		return false
	}
	for _, pat := range t.Tools {
		if prefix, ok := cutWildcard(pat); ok {
			if len(name) > len(prefix) && name[:len(prefix)] == prefix {
				return true
			}
			continue
		}
		if pat == name {
			return true
		}
	}
	return false
}

// cutWildcard splits "prefix.*" into "prefix." and true.
func cutWildcard(pat string) (string, bool) {
	if path.Ext(pat) == ".*" {
		return pat[:len(pat)-1], true
	}
	return "", false
}

// Set is an immutable, loaded and compiled set of templates.
type Set struct {
	byName   map[string]*Template
	monitors []*Monitor // the behaviour rules of package monitor
}

// Get returns the template called name.
func (s *Set) Get(name string) (*Template, bool) {
	if s == nil {
		return nil, false
	}
	t, ok := s.byName[name]
	return t, ok
}

// Names lists the templates in the set, sorted.
func (s *Set) Names() []string {
	if s == nil {
		return nil
	}
	names := make([]string, 0, len(s.byName))
	for n := range s.byName {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Identity is who an identity token names, as template rules and
// conditions see it: the trusted issuer's configured name and URL, the
// subject and the token's claims (nil is an empty map).
type Identity struct {
	Issuer    string
	IssuerURL string
	Subject   string
	Claims    map[string]any
}

// Request is what a declaration asks for, as template conditions see it:
// TTL is the lifetime the task would get; a nil Tools or Context is empty.
type Request struct {
	Template string
	Intent   string
	Tools    []string
	TTL      time.Duration
	Context  map[string]any
}

// AdmitsPrincipal reports whether the agent p may use the template: some
// principal rule names p's issuer and either has no condition or its
// condition holds over p's claims. A rule whose condition fails to evaluate
// admits no one; if no rule admits p, the first such error is returned so
// the caller can log why (the caller denies either way).
func (t *Template) AdmitsPrincipal(p Identity) (bool, error) {
	return Admits(t.Principals, p)
}

// AdmitsUser reports whether the template lets a task act on behalf of u:
// some users rule names u's issuer and either has no condition or its
// condition holds over u's claims. With no users block nobody is admitted.
// As with AdmitsPrincipal, the first evaluation error comes back when no
// rule admits u.
func (t *Template) AdmitsUser(u Identity) (bool, error) {
	return Admits(t.Users, u)
}

// Admits is the check of a rule list: some rule names id's issuer and
// either has no condition or its condition holds over id's claims.
func Admits(rules []PrincipalRule, id Identity) (bool, error) {
	var firstErr error
	for _, r := range rules {
		if r.Issuer != id.Issuer {
			continue
		}
		if r.Condition == nil {
			return true, nil
		}
		ok, err := r.Condition.EvalClaims(id.Claims)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if ok {
			return true, nil
		}
	}
	return false, firstErr
}

// Check evaluates the template's conditions in order against who asks (p),
// on whose behalf (user, nil when the agent acts for itself), what they
// ask for (r) and when (now). It returns the Name of the first condition
// that does not hold, or "" when all hold. A condition that fails to
// evaluate counts as not holding: its name comes back together with the
// error, and the caller denies by that rule.
//
// Conditions see principal = {issuer, issuer_url, subject, claims},
// request = {template, intent, tools, ttl, context}, user = the end user a
// task acts for ({issuer, issuer_url, subject, claims}, or an empty map) and
// now (a timestamp); request.ttl is a CEL duration.
func (t *Template) Check(p Identity, user *Identity, r Request, now time.Time) (failedRule string, err error) {
	if len(t.Conditions) == 0 {
		return "", nil
	}
	tools := r.Tools
	if tools == nil {
		tools = []string{}
	}
	reqCtx := r.Context
	if reqCtx == nil {
		reqCtx = map[string]any{}
	}
	vars := map[string]any{
		"principal": identityVar(p),
		"request": map[string]any{
			"template": r.Template,
			"intent":   r.Intent,
			"tools":    tools,
			"ttl":      r.TTL,
			"context":  reqCtx,
		},
		"user": userVar(user),
		"now":  now,
	}
	for _, c := range t.Conditions {
		ok, err := c.Eval(vars)
		if err != nil {
			return c.Name, err
		}
		if !ok {
			return c.Name, nil
		}
	}
	return "", nil
}

// identityVar is an Identity as conditions see it.
func identityVar(id Identity) map[string]any {
	return map[string]any{
		"issuer":     id.Issuer,
		"issuer_url": id.IssuerURL,
		"subject":    id.Subject,
		"claims":     claimsVar(id.Claims),
	}
}

// userVar is the user variable of template conditions: an empty map when
// the agent acts for itself.
func userVar(u *Identity) map[string]any {
	if u == nil {
		return map[string]any{}
	}
	return identityVar(*u)
}

// claimsVar gives conditions an empty map rather than null when a principal
// carries no claims.
func claimsVar(claims map[string]any) map[string]any {
	if claims == nil {
		return map[string]any{}
	}
	return claims
}
