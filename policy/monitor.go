package policy

import (
	"fmt"
	"net/url"
	"regexp"
	"sync"
	"time"

	"cel.dev/cel-go/cel"
	"go.yaml.in/yaml/v3"
)

// MonitorAction is what a monitor rule does when it fires.
type MonitorAction string

// The monitor actions.
const (
	// MonitorFreezeAgent freezes the agent through the incident controls
	// (and revokes its live tasks).
	MonitorFreezeAgent MonitorAction = "freeze_agent"
	// MonitorAlert only records the trigger (audit, log, metric).
	MonitorAlert MonitorAction = "alert"
	// MonitorRequireApproval makes the agent's sensitive actions need a
	// human approval for the rule's For, whatever their templates say,
	// until an approver approves one or clears it.
	MonitorRequireApproval MonitorAction = "require_approval"
)

// MaxMonitors bounds the monitor rules of a set: each is evaluated on every
// audit event of an agent, and the rule names label a metric.
const MaxMonitors = 64

// MonitorCounters are the rolling counters a monitor rule reads as fields
// of `agent` and `task`: each counts the agent's (or the event's task's)
// events over the last minute.
var MonitorCounters = []string{
	"declarations_per_minute", "denials_per_minute", "tool_calls_per_minute", "distinct_tools_per_minute",
	"action_requests_per_minute", "delegations_per_minute",
}

// countersType is agent in monitor rules.
var countersType = func() *objectType {
	o := &objectType{name: "valet.AgentCounters"}
	for _, c := range MonitorCounters {
		o.fields = append(o.fields, objectField{c, cel.IntType})
	}
	return o
}()

// Monitor is a behaviour rule over an agent's rolling counters: when When
// holds, Action is taken (once per cool-down window per agent).
type Monitor struct {
	Name   string
	When   Condition
	Action MonitorAction
	// Webhook, when set, is POSTed an alert each time the rule fires
	// (its host must be on the monitor's allow-list).
	Webhook string
	// For is how long a require_approval rule's requirement lasts (set
	// only, and required, for that action).
	For time.Duration
	// SSF, when true, sends each firing as a SET on Valet's SSF
	// transmitter (to the streams that request its event type).
	SSF bool
	// Source is the file the rule came from.
	Source string
}

// Fires evaluates the rule over an agent's counters and those of the task
// the event was about (MonitorCounters to their values; all zero for an
// event of no task) at now. An evaluation error is reported, and the rule
// does not fire.
func (m *Monitor) Fires(agent, task map[string]int64, now time.Time) (bool, error) {
	vars := func(c map[string]int64) map[string]any {
		out := make(map[string]any, len(c))
		for k, v := range c {
			out[k] = v
		}
		return out
	}
	return m.When.Eval(map[string]any{"agent": vars(agent), "task": vars(task), "now": now})
}

// monitorEnv is the environment of monitor rules: the agent's counters
// (agent), those of the event's task (task) and the time (now).
var monitorEnv = sync.OnceValues(func() (celEnv, error) {
	return newCELEnv([]celVar{{name: "agent", obj: countersType}, {name: "task", obj: countersType}, {name: "now", typ: cel.TimestampType}})
})

// Monitors are the set's monitor rules, in file order.
func (s *Set) Monitors() []*Monitor {
	if s == nil {
		return nil
	}
	return s.monitors
}

var monitorNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// monitorFields is the schema of one monitor rule.
var monitorFields = []field[*Monitor]{
	{key: "name", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, m *Monitor) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		if !monitorNameRE.MatchString(s) {
			l.report(n, path, "monitor name %q must be 1-63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit", displayName(s))
			return
		}
		if prev, dup := l.monitorNames[s]; dup {
			l.report(n, path, "monitor %q is already defined at %s:%d", s, prev.file, prev.line)
			return
		}
		l.monitorNames[s] = site{l.file, n.Line}
		m.Name = s
	}},
	{key: "when", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, m *Monitor) {
		env, err := monitorEnv()
		if err != nil {
			l.report(n, path, "building the monitor CEL environment: %v", err)
			return
		}
		if c := l.compile(env, n, path, "monitor"); c != nil {
			m.When = *c
		}
	}},
	{key: "action", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, m *Monitor) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		switch a := MonitorAction(s); a {
		case MonitorFreezeAgent, MonitorAlert, MonitorRequireApproval:
			m.Action = a
		default:
			l.report(n, path, "unknown action %q (want %s, %s or %s)", displayName(s), MonitorFreezeAgent, MonitorAlert, MonitorRequireApproval)
		}
	}},
	{key: "for", decode: func(l *templateLoader, n *yaml.Node, path string, m *Monitor) {
		if d, ok := l.duration(n, path); ok {
			if d < time.Second {
				l.report(n, path, "must be at least 1s")
				return
			}
			m.For = d // at most MaxTTL (24 h)
		}
	}},
	{key: "ssf", decode: func(l *templateLoader, n *yaml.Node, path string, m *Monitor) {
		if n.Kind != yaml.ScalarNode || (n.Value != "true" && n.Value != "false") {
			l.report(n, path, "must be true or false")
			return
		}
		m.SSF = n.Value == "true"
	}},
	{key: "webhook", decode: func(l *templateLoader, n *yaml.Node, path string, m *Monitor) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		if msg := checkWebhook(s); msg != "" {
			l.report(n, path, "%s", msg)
			return
		}
		m.Webhook = s
	}},
}

// maxWebhookLen bounds a monitor's webhook URL.
const maxWebhookLen = 2048

// checkWebhook returns what is wrong with a webhook URL, or "".
func checkWebhook(s string) string {
	if len(s) > maxWebhookLen {
		return fmt.Sprintf("webhook is longer than %d bytes", maxWebhookLen)
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return "webhook is not a URL"
	case u.Scheme != "https" && u.Scheme != "http":
		return "webhook must be an https (or http) URL"
	case u.Host == "" || u.Hostname() == "":
		return "webhook must name a host"
	case u.User != nil:
		return "webhook must not carry user info"
	case u.Fragment != "":
		return "webhook must not have a fragment"
	}
	return ""
}

// decodeMonitors decodes the monitors of a file's top level.
func decodeMonitors(l *templateLoader, n *yaml.Node, path string, _ *struct{}) {
	items, ok := l.seq(n, path, "monitors")
	if !ok {
		return
	}
	for i, item := range items {
		p := indexPath(path, i)
		before := len(l.problems)
		m := &Monitor{Source: l.file}
		if !decodeMapping(l, item, p, monitorFields, m) || len(l.problems) != before {
			continue
		}
		if len(l.monitors) >= MaxMonitors {
			l.report(item, p, "more than %d monitors", MaxMonitors)
			continue
		}
		switch {
		case m.Action == MonitorRequireApproval && m.For == 0:
			l.report(item, joinPath(p, "for"), "is required with action %s (how long the requirement lasts, e.g. 15m)", MonitorRequireApproval)
			continue
		case m.Action != MonitorRequireApproval && m.For != 0:
			l.report(item, joinPath(p, "for"), "only applies to action %s", MonitorRequireApproval)
			continue
		}
		m.When.Name = fmt.Sprintf("monitor %s", m.Name)
		l.monitors = append(l.monitors, m)
	}
}
