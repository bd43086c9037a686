//go:build tools

// Package deps pins modules while the packages that use them are written.
package deps

import (
	_ "github.com/coreos/go-oidc/v3/oidc"
	_ "github.com/fsnotify/fsnotify"
	_ "github.com/getkin/kin-openapi/openapi3filter"
	_ "github.com/go-chi/chi/v5"
	_ "github.com/go-jose/go-jose/v4"
	_ "github.com/golang-jwt/jwt/v5"
	_ "github.com/google/uuid"
	_ "github.com/hashicorp/vault/api"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/redis/go-redis/v9"
	_ "go.yaml.in/yaml/v3"
)
