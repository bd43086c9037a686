package identity

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/valet-dev/valet/policy"
)

// IssuerConfig is one trusted OIDC issuer of agent identity tokens.
type IssuerConfig struct {
	// Name is the configured name templates refer to ("dev", "k8s", "github").
	Name string
	// IssuerURL is the exact iss of its tokens; no normalisation is applied.
	IssuerURL string
	// Audiences are the accepted aud values (at least one).
	Audiences []string
	// Algorithms are the allowed signing algorithms; default RS256, ES256,
	// EdDSA. Only asymmetric algorithms are accepted.
	Algorithms []string
	// SubjectClaim names the claim that names the agent; default "sub".
	SubjectClaim string
	// Condition is an optional CEL expression over `claims` that must be true.
	Condition string
	// JWKSURL, if set, skips discovery: keys are fetched from here
	// (Kubernetes-style issuers).
	JWKSURL string
	// StaticJWKS, if set, is the issuer's JWKS document: no network at all.
	StaticJWKS []byte
	// Types are the accepted values of the token's typ header, compared
	// without case and without an "application/" prefix; TypAbsent
	// accepts a token with no typ. Default: absent, JWT and at+jwt (RFC
	// 9068 access tokens, which some IdPs issue for Valet's audience). The
	// aud check applies to every type, and Valet's own task tokens are
	// refused by their issuer whatever their typ.
	Types []string
}

// TypAbsent in IssuerConfig.Types accepts tokens without a typ header.
const TypAbsent = "absent"

var defaultIDTokenTypes = []string{TypAbsent, "JWT", "at+jwt"}

// normalTyp is the form in which typ values are compared (RFC 7515
// section 4.1.9: case-insensitive, "application/" may be omitted).
func normalTyp(s string) string {
	s = strings.ToLower(s)
	return strings.TrimPrefix(s, "application/")
}

var defaultIDTokenAlgs = []string{"RS256", "ES256", "EdDSA"}

// allowedIDTokenAlgs are the only algorithms an issuer may be configured with.
var allowedIDTokenAlgs = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true,
}

// ValidateIssuers checks a trusted-issuer configuration and returns every
// problem found, each naming the field (issuers[i].field). selfIssuer is
// Valet's own token issuer, which may not be trusted.
func ValidateIssuers(cfgs []IssuerConfig, selfIssuer string) []error {
	_, errs := prepareIssuers(cfgs, selfIssuer)
	return errs
}

// preparedIssuer is a validated config with its compiled parts.
type preparedIssuer struct {
	cfg        IssuerConfig // with defaults applied
	cond       *policy.Condition
	staticKeys []jose.JSONWebKey
}

func prepareIssuers(cfgs []IssuerConfig, selfIssuer string) ([]preparedIssuer, []error) {
	var errs []error
	bad := func(i int, field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("issuers[%d].%s: %s", i, field, fmt.Sprintf(format, args...)))
	}
	if len(cfgs) == 0 {
		errs = append(errs, errors.New("issuers: at least one trusted issuer is required"))
	}
	names := map[string]int{}
	urls := map[string]int{}
	out := make([]preparedIssuer, 0, len(cfgs))
	for i, c := range cfgs {
		p := preparedIssuer{cfg: c}
		p.cfg.Audiences = slices.Clone(c.Audiences)
		p.cfg.StaticJWKS = slices.Clone(c.StaticJWKS)

		switch prev, dup := names[c.Name]; {
		case strings.TrimSpace(c.Name) == "":
			bad(i, "name", "is required")
		case c.Name != strings.TrimSpace(c.Name):
			bad(i, "name", "has leading or trailing spaces")
		case dup:
			bad(i, "name", "%q is also the name of issuers[%d]", c.Name, prev)
		default:
			names[c.Name] = i
		}

		switch prev, dup := urls[c.IssuerURL]; {
		case c.IssuerURL == "":
			bad(i, "issuer_url", "is required")
		case c.IssuerURL != strings.TrimSpace(c.IssuerURL):
			bad(i, "issuer_url", "has leading or trailing spaces")
		case dup:
			bad(i, "issuer_url", "%q is also the issuer of issuers[%d]", c.IssuerURL, prev)
		default:
			urls[c.IssuerURL] = i
			if len(c.StaticJWKS) == 0 {
				if err := checkIssuerURL(c.IssuerURL); err != nil {
					bad(i, "issuer_url", "%v", err)
				}
			}
		}
		if selfIssuer != "" && c.IssuerURL != "" &&
			strings.TrimSuffix(c.IssuerURL, "/") == strings.TrimSuffix(selfIssuer, "/") {
			bad(i, "issuer_url", "is Valet's own token issuer %q, which can never vouch for an agent", selfIssuer)
		}

		if len(c.Audiences) == 0 {
			bad(i, "audiences", "at least one audience is required")
		}
		for j, a := range c.Audiences {
			if strings.TrimSpace(a) == "" {
				bad(i, fmt.Sprintf("audiences[%d]", j), "is empty")
			}
		}

		if len(c.Algorithms) == 0 {
			p.cfg.Algorithms = slices.Clone(defaultIDTokenAlgs)
		} else {
			p.cfg.Algorithms = slices.Clone(c.Algorithms)
		}
		for j, a := range c.Algorithms {
			if !allowedIDTokenAlgs[a] {
				bad(i, fmt.Sprintf("algorithms[%d]", j), "%q is not allowed; use one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA", a)
			}
		}

		if len(c.Types) == 0 {
			p.cfg.Types = slices.Clone(defaultIDTokenTypes)
		} else {
			p.cfg.Types = slices.Clone(c.Types)
		}
		for j, typ := range c.Types {
			if typ == "" || typ != strings.TrimSpace(typ) || strings.ContainsAny(typ, " \t,") || len(typ) > 64 {
				bad(i, fmt.Sprintf("types[%d]", j), "%q is not a typ value (write absent for tokens without typ)", typ)
			} else if normalTyp(typ) == "dpop+jwt" {
				bad(i, fmt.Sprintf("types[%d]", j), "%q is a DPoP proof type, never an identity token", typ)
			}
		}

		if c.SubjectClaim == "" {
			p.cfg.SubjectClaim = "sub"
		} else if strings.TrimSpace(c.SubjectClaim) != c.SubjectClaim {
			bad(i, "subject_claim", "has spaces")
		}

		if c.Condition != "" {
			cond, err := policy.CompileClaimsCondition(fmt.Sprintf("issuers[%d].condition", i), c.Condition)
			if err != nil {
				bad(i, "condition", "%v", err)
			} else {
				p.cond = &cond
			}
		}

		if c.JWKSURL != "" && len(c.StaticJWKS) > 0 {
			bad(i, "jwks_url", "cannot be set together with static_jwks")
		}
		if c.JWKSURL != "" {
			if err := checkIssuerURL(c.JWKSURL); err != nil {
				bad(i, "jwks_url", "%v", err)
			}
		}
		if len(c.StaticJWKS) > 0 {
			keys, err := parseJWKS(c.StaticJWKS)
			if err != nil {
				bad(i, "static_jwks", "%v", err)
			}
			p.staticKeys = keys
		}
		out = append(out, p)
	}
	return out, errs
}

// checkIssuerURL accepts absolute https URLs, and http ones only on loopback
// (tests and local development).
func checkIssuerURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("is not a URL: %v", err)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("%q must be an absolute URL without user, query or fragment", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return fmt.Errorf("%q must use https (http is allowed only on loopback)", raw)
	}
	return fmt.Errorf("%q must use https", raw)
}
