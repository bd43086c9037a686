package policy

import (
	"testing"
	"time"
)

// benchTemplate has a principal rule and conditions over every variable of
// a declaration, as a busy template would.
const benchTemplate = `templates:
  - name: triage
    principals:
      - issuer: dev
        condition: 'claims.sub.startsWith("agent-")'
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read, "kb.*"]
    audiences: [https://tools]
    conditions:
      - name: intent-stated
        expression: 'size(request.intent) >= 10'
      - name: no-export
        expression: '!("export" in request.context) || request.context.export == false'
      - name: short
        expression: 'request.ttl <= duration("15m") && now > timestamp("2020-01-01T00:00:00Z")'
      - name: same-tenant
        expression: 'size(user) == 0 || user.claims.tenant == principal.claims.tenant'
      - name: reads
        expression: 'request.tools.all(t, t.startsWith("tickets.") || t.startsWith("kb.")) && principal.issuer == "dev"'
    sensitive_tools:
      - tool: tickets.delete
        rule: policy
        condition: 'action.args.count <= 10 && task.depth < 2 && principal.subject == task.intent.split(" ")[0] && resource.env != "prod"'
`

func benchSet(b *testing.B) *Template {
	b.Helper()
	set, err := Load([]File{{Name: "bench.yaml", Data: []byte(benchTemplate)}}, []string{"dev"})
	if err != nil {
		b.Fatal(err)
	}
	tmpl, _ := set.Get("triage")
	return tmpl
}

// BenchmarkCheck is the policy cost of one declaration: the principal rule
// and every condition.
func BenchmarkCheck(b *testing.B) {
	tmpl := benchSet(b)
	p := Identity{Issuer: "dev", IssuerURL: "https://idp", Subject: "agent-1", Claims: map[string]any{"sub": "agent-1", "tenant": "t1"}}
	u := &Identity{Issuer: "dev", Subject: "alice", Claims: map[string]any{"tenant": "t1"}}
	r := Request{Template: "triage", Intent: "triage ticket 4521", Tools: []string{"tickets.read", "kb.search"}, TTL: 10 * time.Minute,
		Context: map[string]any{"export": false}}
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if ok, err := tmpl.AdmitsPrincipal(p); !ok || err != nil {
			b.Fatalf("not admitted: %v", err)
		}
		if rule, err := tmpl.Check(p, u, r, now); rule != "" || err != nil {
			b.Fatalf("denied by %s: %v", rule, err)
		}
	}
}

// BenchmarkActionCondition is the policy cost of one action token: a
// sensitive tool's condition over the variables broker builds.
func BenchmarkActionCondition(b *testing.B) {
	st, _ := benchSet(b).SensitiveTool("tickets.delete")
	vars := map[string]any{
		"action": map[string]any{"tool": "tickets.delete", "args": map[string]any{"count": 3.0}, "context": map[string]any{}},
		"task": map[string]any{"id": "tsk_1", "template": "triage", "intent": "agent-1 cleans up", "tools": []string{"tickets.read"},
			"deadline": time.Now().Add(time.Hour), "depth": int64(0), "parent": "", "jkt": ""},
		"principal": map[string]any{"issuer": "dev", "subject": "agent-1", "act": []string{}},
		"resource":  map[string]any{"env": "staging", "id": "db"},
		"now":       time.Now(),
	}
	b.ReportAllocs()
	for b.Loop() {
		if ok, err := st.Condition.Eval(vars); !ok || err != nil {
			b.Fatalf("denied: %v", err)
		}
	}
}
