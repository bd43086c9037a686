// Package valetapi is the Go client generated from openapi/openapi.yaml by
// oapi-codegen; regenerate it with `go generate ./client/valetapi`.
package valetapi

//go:generate go run -C ../../tools/oapi github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen -config ../../client/valetapi/oapi-codegen.yaml ../../openapi/openapi.yaml
