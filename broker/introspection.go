package broker

import (
	"errors"
	"maps"
	"slices"
	"strings"
)

// IntrospectionRule admits an identity token as a caller of introspection
// and revocation: a tool server that proves itself with its workload
// identity instead of a client secret. A token is admitted when it comes
// from Issuer, its aud names Audience, its subject (the issuer's subject
// claim) is one of Subjects when Subjects is set, and every claim in Claims
// has exactly the given string value. A rule needs Subjects or Claims: the
// issuer and audience alone are what every agent's identity token carries.
type IntrospectionRule struct {
	// Issuer is the configured name of a trusted issuer.
	Issuer string
	// Audience must be one of the token's aud values.
	Audience string
	// Subjects are the admitted subjects; empty means any that Claims admits.
	Subjects []string
	// Claims are claim names and the exact string value each must have.
	Claims map[string]string
}

func (r IntrospectionRule) validate() error {
	var errs []error
	if r.Issuer == "" {
		errs = append(errs, errors.New("issuer is required"))
	}
	if r.Audience == "" {
		errs = append(errs, errors.New("audience is required"))
	}
	if len(r.Subjects) == 0 && len(r.Claims) == 0 {
		errs = append(errs, errors.New("subjects or claims are required: an issuer and audience alone admit every agent"))
	}
	for _, s := range r.Subjects {
		if strings.TrimSpace(s) == "" {
			errs = append(errs, errors.New("subjects has an empty value"))
		}
	}
	for k, v := range r.Claims {
		if strings.TrimSpace(k) == "" || v == "" {
			errs = append(errs, errors.New("claims has an empty name or value"))
		}
	}
	return errors.Join(errs...)
}

func (r IntrospectionRule) clone() IntrospectionRule {
	r.Subjects = slices.Clone(r.Subjects)
	r.Claims = maps.Clone(r.Claims)
	return r
}

// admits reports whether the verified principal p satisfies the rule.
func (r IntrospectionRule) admits(p Principal) bool {
	if p.Issuer != r.Issuer || !audienceHas(p.Claims["aud"], r.Audience) {
		return false
	}
	if len(r.Subjects) > 0 && !slices.Contains(r.Subjects, p.Subject) {
		return false
	}
	for k, want := range r.Claims {
		if got, ok := p.Claims[k].(string); !ok || got != want {
			return false
		}
	}
	return len(r.Subjects) > 0 || len(r.Claims) > 0
}

// audienceHas reports whether a verified aud claim (a string or a list of
// strings) names want.
func audienceHas(aud any, want string) bool {
	switch a := aud.(type) {
	case string:
		return a == want
	case []any:
		for _, v := range a {
			if s, ok := v.(string); ok && s == want {
				return true
			}
		}
	}
	return false
}

// throttleIDs are the throttle keys of the configured clients, each with
// its realm. (The approver clients have a throttle of their own, in
// package stepup.)
func throttleIDs(cfg Config) []string {
	var ids []string
	for _, c := range cfg.Clients {
		ids = append(ids, "client:"+c.ID)
	}
	return ids
}
