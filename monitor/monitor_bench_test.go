package monitor

import (
	"context"
	"fmt"
	"testing"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

type nopAuditor struct{}

func (nopAuditor) Record(context.Context, broker.Event) error { return nil }

// BenchmarkRecord is what the monitor adds to a request: the decorated
// Record with the buffer always full (the worst case: every event
// dropped), next to the bare auditor.
func BenchmarkRecord(b *testing.B) {
	e := denied("a")
	b.Run("bare", func(b *testing.B) {
		var a broker.Auditor = nopAuditor{}
		for b.Loop() {
			_ = a.Record(context.Background(), e)
		}
	})
	b.Run("monitored", func(b *testing.B) {
		m, err := New(Config{Auditor: nopAuditor{}, Buffer: 1, Rules: func() []*policy.Monitor { return nil }})
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			_ = m.Record(context.Background(), e)
		}
	})
}

// BenchmarkObserve is the monitor goroutine's cost per event: counting and
// evaluating two rules, over 1000 agents.
func BenchmarkObserve(b *testing.B) {
	set, err := policy.Load([]policy.File{{Name: "m.yaml", Data: []byte(`templates: []
monitors:
  - {name: burst, when: 'agent.denials_per_minute > 1000000', action: alert}
  - {name: tools, when: 'agent.distinct_tools_per_minute > 20 || agent.tool_calls_per_minute > 1000000', action: alert}
`)}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	m, err := New(Config{Auditor: nopAuditor{}, Rules: set.Monitors})
	if err != nil {
		b.Fatal(err)
	}
	evs := make([]broker.Event, 1000)
	for i := range evs {
		evs[i] = denied(fmt.Sprint("agent-", i))
	}
	i := 0
	for b.Loop() {
		m.observe(context.Background(), evs[i%len(evs)])
		i++
	}
}
