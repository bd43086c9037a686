package server

import (
	"context"
	"errors"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/monitor"
	"github.com/valet-dev/valet/policy"
)

// MonitorOptions configure continuous monitoring: the templates' monitor
// rules over every agent's rolling counters (package monitor). Its
// freeze_agent actions need the admin API (the incident controls).
type MonitorOptions struct {
	// Buffer and MaxAgents bound the monitor (0: monitor's defaults).
	Buffer    int
	MaxAgents int
}

// newMonitor wraps auditor in the monitor of o.Monitor.
func (s *Server) newMonitor(auditor broker.Auditor) (*monitor.Monitor, error) {
	o := s.o
	cfg := monitor.Config{
		Auditor: auditor, Controls: monitorControls{s}, Buffer: o.Monitor.Buffer, MaxAgents: o.Monitor.MaxAgents,
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
	return monitor.New(cfg)
}

// monitorControls are the incident controls once the admin API is built.
type monitorControls struct{ s *Server }

func (c monitorControls) PutControl(ctx context.Context, who incident.AdminPrincipal, ctl broker.Control, revoke, force bool) (broker.Control, *incident.RevocationJob, error) {
	if c.s.admin == nil {
		return broker.Control{}, nil, errors.New("the admin API is off: no incident controls to freeze with")
	}
	return c.s.admin.PutControl(ctx, who, ctl, revoke, force)
}
