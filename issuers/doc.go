// Package issuers mints and revokes the credentials Valet hands to agents,
// one file per credential kind: jwt.go for Valet's own task tokens.
package issuers
