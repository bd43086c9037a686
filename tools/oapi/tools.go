//go:build tools

// Package oapi pins oapi-codegen, the generator of client/valetapi, in a
// module of its own so Valet's go.mod stays lean.
package oapi

import _ "github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen"
