// Package e2e holds Valet's end-to-end tests: the whole broker over HTTP,
// with a real redis-server, a real OIDC discovery and JWKS server, and every
// answer validated against openapi/openapi.yaml.
package e2e
