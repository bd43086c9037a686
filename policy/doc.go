// Package policy owns who may do what: task templates loaded from YAML
// (every problem reported with its file and line), their CEL conditions and
// the one grammar of a tool name. It imports no other Valet package.
package policy
