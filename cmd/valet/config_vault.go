package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/valet-dev/valet/issuers"
)

// VaultConfig is the config file's vault block: where Vault is and how
// Valet logs in. Without it Valet issues no Vault credentials, and a
// template with a vault block cannot be served.
type VaultConfig struct {
	Address   string          `yaml:"address"`
	Namespace string          `yaml:"namespace"`
	Timeout   Duration        `yaml:"timeout"`
	Auth      VaultAuthConfig `yaml:"auth"`
	// DatabaseMount is the database secrets engine's mount path.
	DatabaseMount string `yaml:"database_mount"`
	// RetryInterval is how often failed revocations are retried.
	RetryInterval Duration `yaml:"retry_interval"`
	// ReconcileInterval is how often the reconciler looks for orphan
	// tokens; ReconcileGrace spares tokens younger than it.
	ReconcileInterval Duration `yaml:"reconcile_interval"`
	ReconcileGrace    Duration `yaml:"reconcile_grace"`
	// DatabaseCheckURLFile and DatabaseCheckURLEnv name a file or an
	// environment variable holding a PostgreSQL connection URL for a role
	// that can do nothing but log in: with it, a task's revocation is
	// confirmed at the database (issuers.DatabaseLogins). Optional.
	DatabaseCheckURLFile string `yaml:"database_check_url_file"`
	DatabaseCheckURLEnv  string `yaml:"database_check_url_env"`

	// token is VALET_VAULT_TOKEN: never in the file.
	token string
}

// VaultAuthConfig says how Valet logs in to Vault. Secrets come from files
// or environment variables, never from the file itself.
type VaultAuthConfig struct {
	Method       string `yaml:"method"` // token, approle, jwt, kubernetes
	Mount        string `yaml:"mount"`
	TokenFile    string `yaml:"token_file"`
	RoleID       string `yaml:"role_id"`
	SecretIDFile string `yaml:"secret_id_file"`
	SecretIDEnv  string `yaml:"secret_id_env"`
	Role         string `yaml:"role"`
	JWTFile      string `yaml:"jwt_file"`
}

// vault returns the vault block, creating it for an env override.
func (c *Config) vault() *VaultConfig {
	if c.Vault == nil {
		c.Vault = &VaultConfig{}
	}
	return c.Vault
}

func (c *Config) vaultDefaults() {
	v := c.Vault
	if v == nil {
		return
	}
	if v.Timeout == 0 {
		v.Timeout = Duration(issuers.DefaultVaultTimeout)
	}
	if v.DatabaseMount == "" {
		v.DatabaseMount = "database"
	}
	if v.RetryInterval == 0 {
		v.RetryInterval = Duration(5 * time.Second)
	}
	if v.ReconcileInterval == 0 {
		v.ReconcileInterval = Duration(5 * time.Minute)
	}
	if v.ReconcileGrace == 0 {
		v.ReconcileGrace = Duration(time.Minute)
	}
	if v.Auth.Method == "" {
		v.Auth.Method = issuers.VaultAuthToken
	}
	v.Auth.TokenFile = c.path(v.Auth.TokenFile)
	v.Auth.SecretIDFile = c.path(v.Auth.SecretIDFile)
	v.Auth.JWTFile = c.path(v.Auth.JWTFile)
	v.DatabaseCheckURLFile = c.path(v.DatabaseCheckURLFile)
}

func (c *Config) validateVault(getenv func(string) string) error {
	v := c.Vault
	if v == nil {
		return nil
	}
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("vault.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if u, err := url.Parse(v.Address); v.Address == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("address", "%q must be an http:// or https:// URL (or set VALET_VAULT_ADDR)", v.Address)
	}
	if v.Timeout < Duration(100*time.Millisecond) || v.Timeout > Duration(time.Minute) {
		bad("timeout", "must be between 100ms and 1m")
	}
	if v.RetryInterval < Duration(100*time.Millisecond) {
		bad("retry_interval", "must be at least 100ms")
	}
	if v.ReconcileInterval < Duration(time.Second) {
		bad("reconcile_interval", "must be at least 1s")
	}
	if v.ReconcileGrace < Duration(10*time.Second) {
		bad("reconcile_grace", "must be at least 10s (a declaration may still be running)")
	}
	if _, err := v.login(getenv); err != nil {
		bad("auth", "%v", err)
	}
	if _, err := v.databaseLogins(getenv); err != nil {
		bad("database_check_url", "%v", err)
	}
	return errors.Join(errs...)
}

// databaseLogins builds the database check from the URL's file or
// variable, or returns nil when neither is set.
func (v *VaultConfig) databaseLogins(getenv func(string) string) (issuers.DatabaseLogins, error) {
	var u string
	switch {
	case v.DatabaseCheckURLFile != "" && v.DatabaseCheckURLEnv != "":
		return nil, errors.New("set database_check_url_file or database_check_url_env, not both")
	case v.DatabaseCheckURLFile != "":
		b, err := os.ReadFile(v.DatabaseCheckURLFile)
		if err != nil {
			return nil, fmt.Errorf("database_check_url_file: %w", err)
		}
		u = strings.TrimSpace(string(b))
	case v.DatabaseCheckURLEnv != "":
		if u = getenv(v.DatabaseCheckURLEnv); u == "" {
			return nil, fmt.Errorf("database_check_url_env: %s is empty", v.DatabaseCheckURLEnv)
		}
	default:
		return nil, nil
	}
	return issuers.NewPostgresLogins(u)
}

// login resolves the auth block into an issuers.VaultLogin, reading secret
// files and variables.
func (v *VaultConfig) login(getenv func(string) string) (issuers.VaultLogin, error) {
	a := v.Auth
	l := issuers.VaultLogin{Method: a.Method, Mount: a.Mount, RoleID: a.RoleID, Role: a.Role, JWTFile: a.JWTFile, Token: v.token}
	read := func(path string) (string, error) {
		b, err := os.ReadFile(path)
		return strings.TrimSpace(string(b)), err
	}
	var err error
	if l.Token == "" && a.TokenFile != "" {
		if l.Token, err = read(a.TokenFile); err != nil {
			return l, fmt.Errorf("token_file: %w", err)
		}
	}
	switch {
	case a.SecretIDFile != "":
		if l.SecretID, err = read(a.SecretIDFile); err != nil {
			return l, fmt.Errorf("secret_id_file: %w", err)
		}
	case a.SecretIDEnv != "":
		l.SecretID = getenv(a.SecretIDEnv)
	}
	return l, l.Validate()
}
