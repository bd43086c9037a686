package policy

import (
	"sync"

	"go.yaml.in/yaml/v3"
)

// Rules of a sensitive tool.
const (
	RulePolicy   = "policy"   // the condition decides, at once
	RuleApproval = "approval" // a human approver decides
)

// SensitiveTool is one entry of a template's sensitive_tools: a tool that
// is granted (declared, delegated) like any other, but carried in a task
// token's action_tools, never its tools, and used only through one-shot
// action tokens that Valet issues per call (see package stepup).
type SensitiveTool struct {
	Tool string
	// Rule is RulePolicy or RuleApproval.
	Rule string
	// Condition is CEL over action, task, principal, resource and now. Required for RulePolicy (true issues the token); optional for
	// RuleApproval (it must hold before an approver is even asked).
	Condition *Condition
	// Resource names an ops-defined resource (config `resources:`) whose
	// labels conditions see as resource.*.
	Resource string
	// ShowArgs lets audit records carry argument values; otherwise they
	// carry the arguments' names and hash only.
	ShowArgs bool
}

// SensitiveTool returns the template's entry for tool, if it is sensitive.
func (t *Template) SensitiveTool(tool string) (*SensitiveTool, bool) {
	for i := range t.Sensitive {
		if t.Sensitive[i].Tool == tool {
			return &t.Sensitive[i], true
		}
	}
	return nil, false
}

// actionEnv is built once: see actionEnvironment.
var actionEnv = sync.OnceValues(actionEnvironment)

type sensitiveBlock struct {
	s                  SensitiveTool
	toolNode, condNode *yaml.Node
}

func decodeSensitiveTools(l *templateLoader, n *yaml.Node, path string, t *Template) {
	items, ok := l.seq(n, path, "sensitive tools")
	if !ok {
		return
	}
	env, err := actionEnv()
	if err != nil {
		l.report(n, path, "building the action CEL environment: %v", err)
		return
	}
	first := map[string]int{}
	for i, item := range items {
		ipath := indexPath(path, i)
		b := &sensitiveBlock{}
		if !decodeMapping(l, item, ipath, sensitiveFields, b) || b.toolNode == nil || b.s.Rule == "" {
			continue
		}
		if j, dup := first[b.s.Tool]; dup {
			l.report(b.toolNode, joinPath(ipath, "tool"), "tool %q is listed twice (also at %s)", b.s.Tool, indexPath(path, j))
			continue
		}
		first[b.s.Tool] = i
		switch {
		case b.condNode != nil:
			b.s.Condition = l.compile(env, b.condNode, joinPath(ipath, "condition"), "sensitive_tools["+b.s.Tool+"].condition")
			if b.s.Condition == nil {
				continue
			}
		case b.s.Rule == RulePolicy:
			l.report(item, joinPath(ipath, "condition"), "is required when rule is %q", RulePolicy)
			continue
		}
		t.Sensitive = append(t.Sensitive, b.s)
	}
}

var sensitiveFields = []field[*sensitiveBlock]{
	{key: "tool", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, b *sensitiveBlock) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		if !ValidToolName(s) {
			l.report(n, path, "%q is not a valid tool name (no wildcards here): %s", truncate(s, 64), ToolNameRules)
			return
		}
		b.s.Tool, b.toolNode = s, n
	}},
	{key: "rule", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, b *sensitiveBlock) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		if s != RulePolicy && s != RuleApproval {
			l.report(n, path, "must be %q or %q", RulePolicy, RuleApproval)
			return
		}
		b.s.Rule = s
	}},
	{key: "condition", decode: func(_ *templateLoader, n *yaml.Node, _ string, b *sensitiveBlock) { b.condNode = n }},
	{key: "resource", decode: func(l *templateLoader, n *yaml.Node, path string, b *sensitiveBlock) {
		s, ok := l.str(n, path)
		if ok && (s == "" || len(s) > 256) {
			l.report(n, path, "must be a resource id of 1 to 256 bytes")
			return
		}
		b.s.Resource = s
	}},
	{key: "show_args", decode: func(l *templateLoader, n *yaml.Node, path string, b *sensitiveBlock) {
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			l.report(n, path, "must be true or false")
			return
		}
		b.s.ShowArgs = n.Value == "true"
	}},
}
