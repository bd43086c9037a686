// Package delegation is RFC 8693 token exchange: the holder of a live task
// token gets a narrower task, recorded under its own, for a sub-agent.
package delegation
