// Package openapi holds Valet's hand-written HTTP contract, embedded so the
// binary serves the exact document its tests validate against.
package openapi

import _ "embed"

// Spec is openapi.yaml, the OpenAPI 3.1 description of every route.
//
//go:embed openapi.yaml
var Spec []byte
