package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/internal/server"
)

// Config is the file given to `valet serve --config`. Every field is listed
// in the README's configuration reference; env overrides are in envOverrides.
type Config struct {
	Addr      string          `yaml:"addr"`
	PublicURL string          `yaml:"public_url"`
	Log       LogConfig       `yaml:"log"`
	Redis     RedisConfig     `yaml:"redis"`
	Signing   SigningConfig   `yaml:"signing"`
	Issuers   []IssuerEntry   `yaml:"issuers"`
	Templates TemplatesConfig `yaml:"templates"`
	Clients   ClientsConfig   `yaml:"introspection"`
	Audit     AuditConfig     `yaml:"audit"`
	Reaper    ReaperConfig    `yaml:"reaper"`
	Limits    LimitsConfig    `yaml:"limits"`
	Identity  IdentityConfig  `yaml:"identity"`
	Admin     AdminConfig     `yaml:"admin"`
	Vault     *VaultConfig    `yaml:"vault"`
	// Agent controls (agent_config.go).
	Resources map[string]map[string]string `yaml:"resources"`
	Approvals ApprovalsConfig              `yaml:"approvals"`
	Rollback  RollbackConfig               `yaml:"rollback"`
	Feed      FeedConfig                   `yaml:"feed"`    // config_feed.go
	Metrics   MetricsConfig                `yaml:"metrics"` // config_feed.go
	OAuth     OAuthConfig                  `yaml:"oauth"`   // config_oauth.go
	SSF       SSFConfig                    `yaml:"ssf"`     // config_ssf.go

	// The agent inventory (config_inventory.go).
	Inventory InventoryConfig `yaml:"inventory"`

	// Continuous monitoring's bounds (config_monitor.go).
	Monitor MonitorConfig `yaml:"monitor"`

	// dir is the config file's folder; relative paths resolve against it.
	dir string
}

type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json, text
}

type RedisConfig struct {
	URL       string   `yaml:"url"`
	Prefix    string   `yaml:"prefix"`
	Retention Duration `yaml:"retention"`
	// Deployment and durability (config_redis.go).
	Mode                string   `yaml:"mode"`
	Addrs               []string `yaml:"addrs"`
	MasterName          string   `yaml:"master_name"`
	Username            string   `yaml:"username"`
	PasswordEnv         string   `yaml:"password_env"`
	SentinelPasswordEnv string   `yaml:"sentinel_password_env"`
	TLS                 bool     `yaml:"tls"`
	Durability          string   `yaml:"durability"`
	ReplicaTimeout      Duration `yaml:"replica_timeout"`
}

type SigningConfig struct {
	Algorithm string       `yaml:"algorithm"`
	ActiveKID string       `yaml:"active_kid"`
	Keys      []SigningKey `yaml:"keys"`
}

type SigningKey struct {
	KID  string `yaml:"kid"`
	File string `yaml:"file"`
	// Retired keys are published so their live tokens still verify, but
	// never sign.
	Retired bool `yaml:"retired"`
}

type IssuerEntry struct {
	Name         string   `yaml:"name"`
	IssuerURL    string   `yaml:"issuer_url"`
	Audiences    []string `yaml:"audiences"`
	Algorithms   []string `yaml:"algorithms"`
	SubjectClaim string   `yaml:"subject_claim"`
	Condition    string   `yaml:"condition"`
	JWKSURL      string   `yaml:"jwks_url"`
	// Types are the accepted typ header values (identity.IssuerConfig.Types).
	Types []string `yaml:"types"`
}

type TemplatesConfig struct {
	Paths []string `yaml:"paths"`
	Watch *bool    `yaml:"watch"`
}

type ClientsConfig struct {
	Clients []ClientEntry `yaml:"clients"`
	// Issuers are rules admitting tool servers' identity tokens.
	Issuers []IntrospectionRuleEntry `yaml:"issuers"`
}

// IntrospectionRuleEntry admits identity tokens of one trusted issuer, for
// one audience, with the given subjects or claim values, as callers of
// introspection and revocation (clientauth.Rule).
type IntrospectionRuleEntry struct {
	Issuer   string            `yaml:"issuer"`
	Audience string            `yaml:"audience"`
	Subjects []string          `yaml:"subjects"`
	Claims   map[string]string `yaml:"claims"`
}

// UnmarshalYAML refuses the old bare issuer name with a message saying
// why (unknown keys are reported by unknownKeys, for the whole file).
func (e *IntrospectionRuleEntry) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: introspection.issuers: %q is a bare issuer name, which let every agent of that issuer introspect and revoke; write a rule {issuer, audience, subjects or claims}", n.Line, n.Value)}}
	}
	if n.Kind != yaml.MappingNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: introspection.issuers: each entry must be a rule {issuer, audience, subjects or claims}", n.Line)}}
	}
	type plain IntrospectionRuleEntry
	return n.Decode((*plain)(e))
}

type ClientEntry struct {
	ID           string `yaml:"id"`
	SecretSHA256 string `yaml:"secret_sha256"`
	SecretEnv    string `yaml:"secret_env"`
}

type AuditConfig struct {
	// File is a path, or "stdout".
	File string `yaml:"file"`
	// NewSegment starts a new file when File's chain does not verify, the
	// old one moved aside unchanged (audit.FileOptions); the flag
	// --audit-new-segment sets it for one start.
	NewSegment bool `yaml:"new_segment"`
	// StreamRetention and StreamMaxLen bound the Redis audit stream (and
	// its task indexes): entries older than StreamRetention (default 24 h
	// plus redis.retention) or beyond the newest StreamMaxLen (default
	// 100,000) are trimmed. The file is the durable copy.
	StreamRetention Duration `yaml:"stream_retention"`
	StreamMaxLen    int64    `yaml:"stream_max_len"`
	// Sync is when a grant's audit record is on disk: "grant" (default)
	// answers only after an fsync covered it; "interval" answers once it
	// is written and fsyncs within SyncInterval (10ms to 1s, default
	// 100ms) after (audit.Log.SyncEvery).
	Sync         string   `yaml:"sync"`
	SyncInterval Duration `yaml:"sync_interval"`
}

type ReaperConfig struct {
	Interval Duration `yaml:"interval"`
}

type LimitsConfig struct {
	MaxBodyBytes   int64    `yaml:"max_body_bytes"`
	MaxTokenBytes  int      `yaml:"max_token_bytes"`
	RequestTimeout Duration `yaml:"request_timeout"`
}

type IdentityConfig struct {
	Leeway          Duration `yaml:"leeway"`
	RefreshInterval Duration `yaml:"refresh_interval"`
}

// Duration reads Go duration strings ("90s", "15m") from YAML.
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		// A TypeError lets the decoder go on and report the other problems.
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %q is not a duration (try \"30s\" or \"5m\")", n.Line, n.Value)}}
	}
	*d = Duration(v)
	return nil
}

// envOverrides are the environment variables that override the file. The
// README's reference lists the same set (a test checks it).
var envOverrides = map[string]func(c *Config, v string) error{
	"VALET_ADDR":       func(c *Config, v string) error { c.Addr = v; return nil },
	"VALET_PUBLIC_URL": func(c *Config, v string) error { c.PublicURL = v; return nil },
	"VALET_REDIS_URL":  func(c *Config, v string) error { c.Redis.URL = v; return nil },
	"VALET_LOG_LEVEL":  func(c *Config, v string) error { c.Log.Level = v; return nil },
	"VALET_LOG_FORMAT": func(c *Config, v string) error { c.Log.Format = v; return nil },
	"VALET_AUDIT_FILE": func(c *Config, v string) error { c.Audit.File = v; return nil },
	"VALET_SIGNING_KEY_FILE": func(c *Config, v string) error {
		c.Signing.Keys, c.Signing.ActiveKID = []SigningKey{{File: v}}, ""
		return nil
	},
	"VALET_TEMPLATES": func(c *Config, v string) error {
		c.Templates.Paths = strings.Split(v, string(os.PathListSeparator))
		return nil
	},
	"VALET_VAULT_ADDR": func(c *Config, v string) error {
		c.vault().Address = v
		return nil
	},
	"VALET_VAULT_TOKEN": func(c *Config, v string) error {
		c.vault().Auth = VaultAuthConfig{Method: "token"}
		c.Vault.token = v
		return nil
	},
	"VALET_REAPER_INTERVAL": func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		c.Reaper.Interval = Duration(d)
		return err
	},
}

// loadConfig reads path, applies env overrides and defaults, and validates,
// reporting every problem at once: unknown keys (with the valid ones),
// values of the wrong kind and invalid settings.
func loadConfig(path string, getenv func(string) string) (*Config, error) {
	c, errs := readConfig(path, getenv)
	if err := configError(path, errs); err != nil {
		return nil, err
	}
	return c, nil
}

// loadServeConfig is loadConfig plus what `valet serve` reads from files
// and the environment before it starts (signing keys, templates, client
// secrets, agent controls), so one run reports every problem.
func loadServeConfig(path string, getenv func(string) string) (*Config, error) {
	c, errs := readConfig(path, getenv)
	if c != nil {
		if _, err := loadSigningKeys(c.Signing); err != nil {
			errs = append(errs, err)
		}
		if len(c.Templates.Paths) > 0 {
			names := make([]string, len(c.Issuers))
			for i, is := range c.Issuers {
				names[i] = is.Name
			}
			if _, err := loadTemplatePaths(c.Templates.Paths, names); err != nil {
				errs = append(errs, err)
			}
		}
		if _, err := c.clientSecrets(getenv); err != nil {
			errs = append(errs, err)
		}
		if _, err := c.agentConfig(getenv); err != nil {
			errs = append(errs, err)
		}
	}
	if err := configError(path, errs); err != nil {
		return nil, err
	}
	return c, nil
}

// configError is every problem found, one a line, counted.
func configError(path string, errs []error) error {
	var flat []error
	var add func(error)
	add = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				add(e)
			}
			return
		}
		flat = append(flat, err)
	}
	for _, err := range errs {
		add(err)
	}
	if len(flat) == 0 {
		return nil
	}
	return fmt.Errorf("config %s: %d problem(s):\n%w", path, len(flat), errors.Join(flat...))
}

// readConfig is loadConfig's work: the config (nil only when the file
// cannot be read or parsed) and every problem found.
func readConfig(path string, getenv func(string) string) (*Config, []error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, []error{fmt.Errorf("reading config: %w", err)}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, plainYAMLError(err)
	}
	errs := unknownKeys(&root, reflect.TypeFor[Config]())
	var c Config
	if len(root.Content) > 0 {
		if err := root.Decode(&c); err != nil {
			errs = append(errs, plainYAMLError(err)...)
		}
	}
	c.dir = filepath.Dir(path)
	if err := c.applyEnv(getenv); err != nil {
		errs = append(errs, err)
	}
	c.defaults()
	c.vaultDefaults()
	for _, err := range []error{c.validate(), c.validateVault(getenv), errors.Join(c.validateFeedMetrics(getenv)...), c.Inventory.validate(), errors.Join(c.validateSSF(getenv)...), c.Monitor.validate()} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	return &c, errs
}

func (c *Config) applyEnv(getenv func(string) string) error {
	var errs []error
	for name, set := range envOverrides {
		if v := getenv(name); v != "" {
			if err := set(c, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:8080"
	}
	if c.PublicURL == "" {
		c.PublicURL = "http://" + c.Addr
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	c.Redis.defaults()
	if c.Redis.Prefix == "" {
		c.Redis.Prefix = "valet"
	}
	if c.Redis.Retention == 0 {
		c.Redis.Retention = Duration(time.Hour)
	}
	if c.Signing.Algorithm == "" {
		c.Signing.Algorithm = "EdDSA"
	}
	if c.Audit.File == "" {
		c.Audit.File = "stdout"
	}
	if c.Audit.StreamRetention == 0 {
		c.Audit.StreamRetention = Duration(24*time.Hour) + c.Redis.Retention
	}
	if c.Audit.StreamMaxLen == 0 {
		c.Audit.StreamMaxLen = audit.DefaultStreamMaxLen
	}
	if c.Audit.Sync == "" {
		c.Audit.Sync = auditSyncGrant
	}
	if c.Audit.Sync == auditSyncInterval && c.Audit.SyncInterval == 0 {
		c.Audit.SyncInterval = Duration(defaultAuditSyncInterval)
	}
	if c.Reaper.Interval == 0 {
		c.Reaper.Interval = Duration(time.Second)
	}
	if c.Templates.Watch == nil {
		t := true
		c.Templates.Watch = &t
	}
	if c.Limits.MaxBodyBytes == 0 {
		c.Limits.MaxBodyBytes = 64 << 10
	}
	if c.Limits.RequestTimeout == 0 {
		c.Limits.RequestTimeout = Duration(10 * time.Second)
	}
	for i := range c.Signing.Keys {
		c.Signing.Keys[i].File = c.path(c.Signing.Keys[i].File)
	}
	for i := range c.Templates.Paths {
		c.Templates.Paths[i] = c.path(c.Templates.Paths[i])
	}
	if c.Audit.File != "stdout" {
		c.Audit.File = c.path(c.Audit.File)
	}
}

// path resolves p against the config file's folder.
func (c *Config) path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

func (c *Config) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if u, err := url.Parse(c.PublicURL); err != nil || u.Scheme == "" || u.Host == "" {
		bad("public_url", "%q must be an absolute URL", c.PublicURL)
	}
	errs = append(errs, c.Rollback.validate()...)
	if c.Redis.single() && c.Redis.URL == "" {
		bad("redis.url", "is required (or set VALET_REDIS_URL)")
	} else if u, err := url.Parse(c.Redis.URL); c.Redis.single() && (err != nil || (u.Scheme != "redis" && u.Scheme != "rediss")) {
		bad("redis.url", "must be a redis:// or rediss:// URL")
	}
	errs = append(errs, c.Redis.validate()...)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q must be debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		bad("log.format", "%q must be json or text", c.Log.Format)
	}
	if len(c.Signing.Keys) == 0 {
		bad("signing.keys", "at least one key file is required (create one with `valet keys generate`)")
	}
	for i, k := range c.Signing.Keys {
		if k.File == "" {
			bad(fmt.Sprintf("signing.keys[%d].file", i), "is required")
		}
	}
	if len(c.Issuers) == 0 {
		bad("issuers", "at least one trusted issuer is required")
	}
	if len(c.Templates.Paths) == 0 {
		bad("templates.paths", "at least one template file or folder is required")
	}
	for i, cl := range c.Clients.Clients {
		field := fmt.Sprintf("introspection.clients[%d]", i)
		if cl.ID == "" {
			bad(field+".id", "is required")
		}
		if (cl.SecretSHA256 == "") == (cl.SecretEnv == "") {
			bad(field, "set exactly one of secret_sha256 and secret_env")
		}
		if cl.SecretSHA256 != "" {
			if b, err := hex.DecodeString(cl.SecretSHA256); err != nil || len(b) != sha256.Size {
				bad(field+".secret_sha256", "must be 64 hex digits (sha256sum of the secret)")
			}
		}
	}
	errs = append(errs, c.validateIntrospectionClients()...)
	if c.Reaper.Interval < Duration(100*time.Millisecond) {
		bad("reaper.interval", "must be at least 100ms")
	}
	if c.Limits.MaxTokenBytes > server.MaxHeaderBytes/2 {
		bad("limits.max_token_bytes", "must be at most %d (half of the %d-byte header cap, which also carries a DPoP proof)", server.MaxHeaderBytes/2, server.MaxHeaderBytes)
	}
	if c.Limits.MaxBodyBytes < 1024 {
		bad("limits.max_body_bytes", "must be at least 1024")
	}
	if c.Audit.StreamRetention < Duration(time.Minute) {
		bad("audit.stream_retention", "must be at least 1m")
	}
	if c.Audit.StreamMaxLen < 1000 {
		bad("audit.stream_max_len", "must be at least 1000")
	}
	errs = append(errs, c.Audit.validateSync()...)
	if c.Identity.Leeway > Duration(time.Minute) {
		bad("identity.leeway", "must be at most 60s")
	}
	errs = append(errs, c.validateIncident()...)
	errs = append(errs, c.validateOAuth()...)
	return errors.Join(errs...)
}

// validateIntrospectionClients refuses a rule that cannot match and one that
// agents' own identity tokens could satisfy: an issuer and an audience of
// that issuer alone are what every agent of the issuer presents, so a
// rule needs subjects or claims naming only the tool server.
func (c *Config) validateIntrospectionClients() []error {
	var errs []error
	for i, r := range c.Clients.Issuers {
		field := fmt.Sprintf("introspection.issuers[%d]", i)
		bad := func(key, format string, args ...any) {
			errs = append(errs, fmt.Errorf("%s%s: %s", field, key, fmt.Sprintf(format, args...)))
		}
		var issuer *IssuerEntry
		for j := range c.Issuers {
			if c.Issuers[j].Name == r.Issuer {
				issuer = &c.Issuers[j]
			}
		}
		switch {
		case r.Issuer == "":
			bad(".issuer", "is required (the name of a trusted issuer)")
		case issuer == nil:
			bad(".issuer", "%q is not the name of a trusted issuer under issuers", r.Issuer)
		}
		switch {
		case r.Audience == "":
			bad(".audience", "is required")
		case issuer != nil && !slices.Contains(issuer.Audiences, r.Audience):
			bad(".audience", "%q is not one of issuer %q's audiences, so no token with it would verify", r.Audience, r.Issuer)
		}
		if len(r.Subjects) == 0 && len(r.Claims) == 0 {
			bad(".subjects", "a rule with only issuer %q and audience %q admits every agent's identity token from that issuer; list the tool server's subjects (or claims only its tokens carry)", r.Issuer, r.Audience)
		}
		for j, s := range r.Subjects {
			if strings.TrimSpace(s) == "" {
				bad(fmt.Sprintf(".subjects[%d]", j), "is empty")
			}
		}
		for k, v := range r.Claims {
			if strings.TrimSpace(k) == "" || v == "" {
				bad(".claims", "%q: claim names and values must not be empty", k)
			}
		}
	}
	return errs
}

// introspectionRules is the broker's form of introspection.issuers.
func (c *Config) introspectionRules() []clientauth.Rule {
	out := make([]clientauth.Rule, len(c.Clients.Issuers))
	for i, r := range c.Clients.Issuers {
		out[i] = clientauth.Rule{Issuer: r.Issuer, Audience: r.Audience, Subjects: r.Subjects, Claims: r.Claims}
	}
	return out
}

// clientSecrets resolves the introspection clients' secret hashes.
func (c *Config) clientSecrets(getenv func(string) string) ([]clientSecret, error) {
	var out []clientSecret
	var errs []error
	for i, cl := range c.Clients.Clients {
		var sum [32]byte
		if cl.SecretEnv != "" {
			v := getenv(cl.SecretEnv)
			if len(v) < 16 {
				errs = append(errs, fmt.Errorf("introspection.clients[%d]: environment variable %s must hold a secret of at least 16 characters", i, cl.SecretEnv))
				continue
			}
			sum = sha256.Sum256([]byte(v))
		} else {
			b, _ := hex.DecodeString(cl.SecretSHA256)
			copy(sum[:], b)
		}
		if isPublishedSecret(sum) {
			key := ".secret_sha256"
			if cl.SecretEnv != "" {
				key = " (environment variable " + cl.SecretEnv + ")"
			}
			errs = append(errs, fmt.Errorf("introspection.clients[%d]%s %s", i, key, publishedSecretMsg))
			continue
		}
		out = append(out, clientSecret{id: cl.ID, sum: sum})
	}
	return out, errors.Join(errs...)
}

type clientSecret struct {
	id  string
	sum [32]byte
}
