package server

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/valet-dev/valet/ssf"
)

// SSFOptions configure OpenID Shared Signals: the transmitter (when Store
// is set) and the receiver (when Receiver is set).
type SSFOptions struct {
	// Store keeps the transmitter's streams and queues; nil leaves the
	// transmitter off.
	Store ssf.Store
	// PushHosts are the hosts receivers' push endpoints may name.
	PushHosts []string
	// IssuerURLs maps trusted issuers' names to their URLs (agent subjects).
	IssuerURLs map[string]string
	// QueueSize and MaxStreams bound the transmitter (0: ssf's defaults).
	QueueSize  int
	MaxStreams int
	// Receiver, when set, takes SETs from trusted transmitters; its
	// Actions (the incident controls) and, when nil, Replay (the agent
	// controls' Limiter), Logger and Now are filled in by New.
	Receiver *ssf.ReceiverConfig
}

// newSSF builds the transmitter and receiver of o.SSF.
func (s *Server) newSSF() (*ssf.Transmitter, http.Handler, error) {
	o := s.o
	var t *ssf.Transmitter
	if so := o.SSF; so.Store != nil {
		signer, ok := o.Tokens.(ssf.SETSigner)
		if !ok {
			return nil, nil, errors.New("server: the SSF transmitter needs a token issuer that signs SETs")
		}
		if s.hub == nil || s.admin == nil {
			return nil, nil, errors.New("server: the SSF transmitter needs the revocation feed and the admin API")
		}
		var reg prometheus.Registerer
		if s.metrics != nil {
			reg = registerer{s}
		}
		var err error
		t, err = ssf.NewTransmitter(ssf.TransmitterConfig{
			Issuer: o.PublicURL, Signer: signer, Store: so.Store, Feed: s.hub, Tasks: o.Ledger, IssuerURLs: so.IssuerURLs,
			PushHosts: so.PushHosts, QueueSize: so.QueueSize, MaxStreams: so.MaxStreams, Registerer: reg,
			Logger: o.Logger, Now: o.Now,
		})
		if err != nil {
			return nil, nil, err
		}
	}
	var rc *ssf.Receiver
	if cfg := o.SSF.Receiver; cfg != nil {
		if s.admin == nil {
			return nil, nil, errors.New("server: the SSF receiver needs the admin API (its actions are incident controls)")
		}
		c := *cfg
		c.Actions = s.admin
		for _, tt := range c.Transmitters {
			for _, name := range tt.Templates {
				if _, ok := o.Templates.Get(name); !ok {
					return nil, nil, fmt.Errorf("server: ssf receiver %s: template %q (quarantined by its quarantine_template action) is not defined", tt.Name, name)
				}
			}
		}
		if c.Replay == nil {
			if o.Agent.Limiter == nil {
				return nil, nil, errors.New("server: the SSF receiver needs a replay store (the agent limiter)")
			}
			c.Replay = o.Agent.Limiter
		}
		if c.Logger == nil {
			c.Logger = o.Logger
		}
		if c.Now == nil {
			c.Now = o.Now
		}
		var err error
		if rc, err = ssf.NewReceiver(c); err != nil {
			return nil, nil, err
		}
		return t, rc, nil
	}
	return t, nil, nil
}

// registerer registers on the server's metrics.
type registerer struct{ s *Server }

func (r registerer) Register(c prometheus.Collector) error { return r.s.metrics.Register(c) }
func (r registerer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.s.metrics.Register(c); err != nil {
			panic(err)
		}
	}
}
func (r registerer) Unregister(prometheus.Collector) bool { return false }
