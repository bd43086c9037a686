// Package console is the responders' web console at /console: sign-in at
// the admin OIDC issuer (authorization code + PKCE), a server-side session,
// and server-rendered pages over the incident package's admin logic (the
// same role rules, the same functions, the same audit as the admin API).
package console
