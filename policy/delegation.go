package policy

import (
	"strconv"

	"go.yaml.in/yaml/v3"
)

const (
	// DefaultMaxDepth is a delegation block's max_depth when it sets none.
	DefaultMaxDepth = 2
	// MaxDelegationDepth is the deepest any template may allow.
	MaxDelegationDepth = 16
)

// DelegationPolicy is a template's delegation block: which sub-agents a
// task may delegate to (Condition over the sub-agent's identity claims,
// required) and how deep a delegation tree may grow.
type DelegationPolicy struct {
	MaxDepth  int
	Condition *Condition
}

// Budgets cap what one task tree may do. Zero means no cap.
type Budgets struct {
	// Actions caps the action tokens issued for one task.
	Actions int
	// Delegations caps the token exchanges in one delegation tree.
	Delegations int
}

// delegationBlock is a template's delegation block as it is decoded.
type delegationBlock struct {
	p        DelegationPolicy
	condNode *yaml.Node
}

func decodeDelegation(l *templateLoader, n *yaml.Node, path string, t *Template) {
	b := &delegationBlock{p: DelegationPolicy{MaxDepth: DefaultMaxDepth}}
	if !decodeMapping(l, n, path, delegationFields, b) || b.condNode == nil {
		return
	}
	b.p.Condition = l.compile(l.claimsEnv, b.condNode, joinPath(path, "condition"), "delegation.condition")
	if b.p.Condition != nil {
		t.Delegation = &b.p
	}
}

var delegationFields = []field[*delegationBlock]{
	{key: "max_depth", decode: func(l *templateLoader, n *yaml.Node, path string, b *delegationBlock) {
		if d, ok := l.intIn(n, path, 1, MaxDelegationDepth); ok {
			b.p.MaxDepth = d
		}
	}},
	{key: "condition", required: true, decode: func(_ *templateLoader, n *yaml.Node, _ string, b *delegationBlock) {
		b.condNode = n
	}},
}

func decodeBudgets(l *templateLoader, n *yaml.Node, path string, t *Template) {
	decodeMapping(l, n, path, budgetFields, &t.Budgets)
}

var budgetFields = []field[*Budgets]{
	{key: "actions", decode: func(l *templateLoader, n *yaml.Node, path string, b *Budgets) {
		b.Actions, _ = l.intIn(n, path, 1, 1_000_000)
	}},
	{key: "delegations", decode: func(l *templateLoader, n *yaml.Node, path string, b *Budgets) {
		b.Delegations, _ = l.intIn(n, path, 1, 1_000_000)
	}},
}

// intIn decodes an integer from lo to hi.
func (l *templateLoader) intIn(n *yaml.Node, path string, lo, hi int) (int, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		l.report(n, path, "must be a whole number from %d to %d", lo, hi)
		return 0, false
	}
	v, err := strconv.Atoi(n.Value)
	if err != nil || v < lo || v > hi {
		l.report(n, path, "must be a whole number from %d to %d", lo, hi)
		return 0, false
	}
	return v, true
}
