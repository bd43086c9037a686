package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/monitor"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/ssf"
)

// MonitorOptions configure continuous monitoring: the templates' monitor
// rules over every agent's rolling counters (package monitor). Its
// freeze_agent actions need the admin API (the incident controls).
type MonitorOptions struct {
	// Buffer and MaxAgents bound the monitor (0: monitor's defaults).
	Buffer    int
	MaxAgents int
	// AlertHosts are the hosts whose webhooks monitor rules may call; a
	// rule naming another host refuses the start (and, once reloaded, is
	// never called).
	AlertHosts []string
}

// newMonitor wraps auditor in the monitor of o.Monitor.
func (s *Server) newMonitor(auditor broker.Auditor) (*monitor.Monitor, error) {
	o := s.o
	cfg := monitor.Config{
		Auditor: auditor, Controls: monitorControls{s}, Approvals: monitorApprovals{s}, Signals: monitorSignals{s}, Buffer: o.Monitor.Buffer, MaxAgents: o.Monitor.MaxAgents, AlertHosts: o.Monitor.AlertHosts,
		Rules: func() []*policy.Monitor {
			if s.svc != nil {
				return s.svc.Templates().Monitors() // the rules of the templates in force, reloads included
			}
			return o.Templates.Monitors()
		},
		Now: o.Now, Logger: o.Logger,
	}
	if s.metrics != nil {
		cfg.Registerer = registerer{s}
	}
	m, err := monitor.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := m.CheckRules(o.Templates.Monitors()); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	return m, nil
}

// monitorControls are the incident controls once the admin API is built.
type monitorControls struct{ s *Server }

func (c monitorControls) PutControl(ctx context.Context, who incident.AdminPrincipal, ctl broker.Control, revoke, force bool) (broker.Control, *incident.RevocationJob, error) {
	if c.s.admin == nil {
		return broker.Control{}, nil, errors.New("the admin API is off: no incident controls to freeze with")
	}
	return c.s.admin.PutControl(ctx, who, ctl, revoke, force)
}

// monitorApprovals are the sensitive actions once they are built.
type monitorApprovals struct{ s *Server }

func (a monitorApprovals) RequireApproval(ctx context.Context, issuer, agent, rule, taskID string, until time.Time) error {
	if a.s.steps == nil {
		return errors.New("sensitive actions are off: no approvals to require")
	}
	return a.s.steps.RequireApproval(ctx, issuer, agent, rule, taskID, until)
}

// monitorSignals are the SSF transmitter once it is built.
type monitorSignals struct{ s *Server }

func (g monitorSignals) Trigger(ctx context.Context, t monitor.Trigger) error {
	if g.s.ssf == nil {
		return errors.New("the SSF transmitter is off (ssf.transmitter.enabled)")
	}
	level := ssf.RiskMedium // an alert: Valet only told someone
	if t.Action == policy.MonitorFreezeAgent || t.Action == policy.MonitorRequireApproval {
		level = ssf.RiskHigh
	}
	return g.s.ssf.RiskLevelChange(ctx, ssf.RiskSignal{Rule: t.Rule, Level: level, Issuer: t.Issuer, Agent: t.Agent,
		TaskID: t.TaskID, Action: string(t.Action), At: t.Time})
}
