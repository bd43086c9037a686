package main

import (
	"fmt"
	"net/url"
	"slices"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/ssf"
)

// SSFConfig is the `ssf:` block: OpenID Shared Signals out (transmitter)
// and in (receiver). See docs/signals.md.
type SSFConfig struct {
	Transmitter SSFTransmitterConfig `yaml:"transmitter"`
	Receiver    SSFReceiverConfig    `yaml:"receiver"`
}

// SSFTransmitterConfig turns the transmitter on and bounds it.
type SSFTransmitterConfig struct {
	Enabled bool `yaml:"enabled"`
	// PushHosts are the hosts (host or host:port) receivers' push
	// endpoints may name.
	PushHosts  []string `yaml:"push_hosts"`
	QueueSize  int      `yaml:"queue_size"`
	MaxStreams int      `yaml:"max_streams"`
}

// SSFReceiverConfig lists the transmitters whose SETs Valet acts on.
type SSFReceiverConfig struct {
	Transmitters []SSFTransmitterEntry `yaml:"transmitters"`
}

// SSFTransmitterEntry is one trusted transmitter (ssf.TrustedTransmitter).
type SSFTransmitterEntry struct {
	Name       string   `yaml:"name"`
	Issuer     string   `yaml:"issuer"`
	JWKSURL    string   `yaml:"jwks_url"`
	Algorithms []string `yaml:"algorithms"`
	Audience   []string `yaml:"audience"`
	// AuthorizationHeaderEnv names an environment variable holding the
	// Authorization header every push must carry.
	AuthorizationHeaderEnv string `yaml:"authorization_header_env"`
	// SubjectIssuer names the entry of `issuers:` whose principals the
	// transmitter's subjects are.
	SubjectIssuer string `yaml:"subject_issuer"`
	// Actions maps event type URIs to freeze_agent, revoke_tasks or
	// quarantine_template.
	Actions map[string]string `yaml:"actions"`
	// Templates are the templates a quarantine_template action suspends.
	Templates []string `yaml:"templates"`
}

// validateSSF reports every problem of the ssf block.
func (c *Config) validateSSF(getenv func(string) string) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	t := c.SSF.Transmitter
	if t.QueueSize < 0 || t.QueueSize > 100000 {
		bad("ssf.transmitter.queue_size", "must be between 0 (the default, %d) and 100000", ssf.DefaultQueueSize)
	}
	if t.MaxStreams < 0 || t.MaxStreams > 1000 {
		bad("ssf.transmitter.max_streams", "must be between 0 (the default, %d) and 1000", ssf.DefaultMaxStreams)
	}
	for i, h := range t.PushHosts {
		if u, err := url.Parse("https://" + h); h == "" || err != nil || u.Host != h {
			bad(fmt.Sprintf("ssf.transmitter.push_hosts[%d]", i), "%q must be a host or host:port", h)
		}
	}
	if (t.Enabled || len(c.SSF.Receiver.Transmitters) > 0) && len(c.Admin.Issuers) == 0 {
		bad("ssf", "needs the admin API (admin.issuers): stream management and the receiver's actions go through it")
	}
	for i, e := range c.SSF.Receiver.Transmitters {
		where := fmt.Sprintf("ssf.receiver.transmitters[%d]", i)
		if !slices.ContainsFunc(c.Issuers, func(is IssuerEntry) bool { return is.Name == e.SubjectIssuer }) {
			bad(where+".subject_issuer", "%q is not the name of an entry of issuers", e.SubjectIssuer)
		}
		if e.AuthorizationHeaderEnv != "" && getenv(e.AuthorizationHeaderEnv) == "" {
			bad(where+".authorization_header_env", "environment variable %s is empty", e.AuthorizationHeaderEnv)
		}
		for typ, a := range e.Actions {
			switch ssf.Action(a) {
			case ssf.ActionFreezeAgent, ssf.ActionRevokeTasks:
			case ssf.ActionQuarantineTemplate:
				if len(e.Templates) == 0 {
					bad(fmt.Sprintf("%s.actions[%q]", where, typ), "quarantine_template needs the templates it suspends (%s.templates)", where)
				}
			default:
				bad(fmt.Sprintf("%s.actions[%q]", where, typ), "%q is not an action (want freeze_agent, revoke_tasks or quarantine_template)", a)
			}
		}
	}
	return errs
}

// ssfOptions builds the server's SSF options (nil when the block is empty).
// NewReceiver checks the rest of each transmitter entry at start.
func (c *Config) ssfOptions(rc redis.UniversalClient, getenv func(string) string) (*server.SSFOptions, error) {
	t := c.SSF.Transmitter
	if !t.Enabled && len(c.SSF.Receiver.Transmitters) == 0 {
		return nil, nil
	}
	o := &server.SSFOptions{PushHosts: t.PushHosts, QueueSize: t.QueueSize, MaxStreams: t.MaxStreams, IssuerURLs: map[string]string{}}
	for _, is := range c.Issuers {
		o.IssuerURLs[is.Name] = is.IssuerURL
	}
	if t.Enabled {
		store, err := revocation.NewRedisSSFStore(rc, c.Redis.Prefix)
		if err != nil {
			return nil, err
		}
		o.Store = store
	}
	if len(c.SSF.Receiver.Transmitters) > 0 {
		rcfg := &ssf.ReceiverConfig{}
		for _, e := range c.SSF.Receiver.Transmitters {
			tt := ssf.TrustedTransmitter{Name: e.Name, Issuer: e.Issuer, JWKSURL: e.JWKSURL, Algorithms: e.Algorithms,
				Audience: e.Audience, SubjectIssuer: e.SubjectIssuer, SubjectIssuerURL: o.IssuerURLs[e.SubjectIssuer],
				Actions: map[string]ssf.Action{}, Templates: e.Templates}
			if e.AuthorizationHeaderEnv != "" {
				tt.AuthorizationHeader = getenv(e.AuthorizationHeaderEnv)
			}
			for typ, a := range e.Actions {
				tt.Actions[typ] = ssf.Action(a)
			}
			rcfg.Transmitters = append(rcfg.Transmitters, tt)
		}
		o.Receiver = rcfg
	}
	return o, nil
}
