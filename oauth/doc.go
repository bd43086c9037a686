// Package oauth is Valet's standard front door: the RFC 6749 token endpoint
// at POST /v1/token with the RFC 7523 jwt-bearer grant and client
// credentials authenticated by private_key_jwt, the task described by RFC
// 9396 authorization_details (or a documented scope mapping) and bound to
// an RFC 8707 resource, answered and refused in RFC 6749 terms. Every token
// it issues is a task declared through broker.Service.
package oauth
