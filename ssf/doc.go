// Package ssf speaks OpenID Shared Signals (SSF 1.0) for Valet: a
// transmitter that turns the revocation feed (ended tasks, revoked
// credentials, agent freezes) into CAEP and RISC Security Event Tokens
// (RFC 8417) delivered by push (RFC 8935) or poll (RFC 8936), with the SSF
// stream management API behind it; and a receiver that verifies SETs from
// configured transmitters (the company IdP) and maps their events to
// Valet's incident controls.
package ssf
