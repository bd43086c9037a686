// Package identity says who is calling: it verifies the identity tokens of
// agents, of the end users they act for (subject_token) and of admins
// against trusted OIDC issuers (discovery, a rate-limited JWKS cache and
// the hostile-token rules) and implements broker.Authenticator.
package identity
