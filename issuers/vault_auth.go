package issuers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-dev/valet/broker"
)

// Vault auth methods Valet can log in with.
const (
	VaultAuthToken      = "token"
	VaultAuthAppRole    = "approle"
	VaultAuthJWT        = "jwt"
	VaultAuthKubernetes = "kubernetes"
)

// DefaultKubernetesJWTFile is where a pod finds its service account token.
const DefaultKubernetesJWTFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// VaultLogin says how Valet logs in to Vault. Secrets are read from files
// or given by value, never logged.
type VaultLogin struct {
	// Method is token, approle, jwt or kubernetes.
	Method string
	// Mount is the auth method's mount path; default: the method's name.
	Mount string
	// Token is Valet's token (method token).
	Token string
	// RoleID and SecretID log in with AppRole.
	RoleID, SecretID string
	// Role is the jwt or kubernetes auth role.
	Role string
	// JWTFile is read at every login (method jwt, or kubernetes, where it
	// defaults to DefaultKubernetesJWTFile), so a rotated token is used.
	JWTFile string
	// JWT is a fixed token for method jwt, when there is no file.
	JWT string
}

// Validate reports every problem of l at once.
func (l VaultLogin) Validate() error {
	var errs []error
	switch l.Method {
	case VaultAuthToken:
		if l.Token == "" {
			errs = append(errs, errors.New("method token needs a token (set VALET_VAULT_TOKEN or vault.auth.token_file)"))
		}
	case VaultAuthAppRole:
		if l.RoleID == "" || l.SecretID == "" {
			errs = append(errs, errors.New("method approle needs role_id and a secret id"))
		}
	case VaultAuthJWT:
		if l.Role == "" {
			errs = append(errs, errors.New("method jwt needs role"))
		}
		if l.JWTFile == "" && l.JWT == "" {
			errs = append(errs, errors.New("method jwt needs jwt_file"))
		}
	case VaultAuthKubernetes:
		if l.Role == "" {
			errs = append(errs, errors.New("method kubernetes needs role"))
		}
	default:
		errs = append(errs, fmt.Errorf("method %q must be token, approle, jwt or kubernetes", l.Method))
	}
	return errors.Join(errs...)
}

// VaultClientConfig configures Valet's own Vault client.
type VaultClientConfig struct {
	Address   string
	Namespace string
	// Timeout bounds each HTTP call; default DefaultVaultTimeout.
	Timeout time.Duration
	Login   VaultLogin
	Logger  *slog.Logger
}

// VaultSession is Valet's own logged-in Vault client. Run keeps its token
// alive: it renews it in the background and logs in again when it can no
// longer be renewed. It is safe for concurrent use.
type VaultSession struct {
	client *api.Client
	login  VaultLogin
	log    *slog.Logger

	mu     sync.Mutex
	secret *api.Secret // the current login, for the lifetime watcher
}

// NewVaultSession builds the client (no automatic retries, bounded timeout)
// and logs in. A Vault that cannot be reached is an error wrapping
// broker.ErrUnavailable.
func NewVaultSession(ctx context.Context, cfg VaultClientConfig) (*VaultSession, error) {
	if err := cfg.Login.Validate(); err != nil {
		return nil, fmt.Errorf("vault auth: %w", err)
	}
	c := api.DefaultConfig()
	if c.Error != nil {
		return nil, fmt.Errorf("vault client: %w", c.Error)
	}
	c.Address = cfg.Address
	c.MaxRetries = 0
	c.Timeout = cfg.Timeout
	if c.Timeout <= 0 {
		c.Timeout = DefaultVaultTimeout
	}
	client, err := api.NewClient(c)
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	client.ClearToken() // never pick up VAULT_TOKEN from the environment by accident
	if cfg.Namespace != "" {
		client.SetNamespace(cfg.Namespace)
	}
	s := &VaultSession{client: client, login: cfg.Login, log: cfg.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.login.Mount == "" {
		s.login.Mount = s.login.Method
	}
	s.login.Mount = strings.Trim(s.login.Mount, "/")
	if s.login.Method == VaultAuthKubernetes && s.login.JWTFile == "" {
		s.login.JWTFile = DefaultKubernetesJWTFile
	}
	if err := s.Login(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Client is the logged-in client. Its token changes when Run logs in again.
func (s *VaultSession) Client() *api.Client { return s.client }

// Login logs in once and installs the new token.
func (s *VaultSession) Login(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.client.CloneConfig().Timeout)
	defer cancel()
	var sec *api.Secret
	if s.login.Method == VaultAuthToken {
		c, err := s.client.Clone()
		if err != nil {
			return err
		}
		c.SetToken(s.login.Token)
		look, err := c.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			return classify("looking up Valet's vault token", err)
		}
		ttl, _ := look.TokenTTL()
		renewable, _ := look.TokenIsRenewable()
		accessor, _ := look.TokenAccessor()
		sec = &api.Secret{Auth: &api.SecretAuth{ClientToken: s.login.Token, Accessor: accessor,
			LeaseDuration: int(ttl / time.Second), Renewable: renewable}}
	} else {
		data := map[string]any{}
		switch s.login.Method {
		case VaultAuthAppRole:
			data["role_id"], data["secret_id"] = s.login.RoleID, s.login.SecretID
		case VaultAuthJWT, VaultAuthKubernetes:
			jwt := s.login.JWT
			if s.login.JWTFile != "" {
				b, err := os.ReadFile(s.login.JWTFile)
				if err != nil {
					return fmt.Errorf("reading the vault login jwt: %w", err)
				}
				jwt = strings.TrimSpace(string(b))
			}
			data["role"], data["jwt"] = s.login.Role, jwt
		}
		c, err := s.client.Clone() // no token: a login needs none
		if err != nil {
			return err
		}
		sec, err = c.Logical().WriteWithContext(ctx, "auth/"+s.login.Mount+"/login", data)
		if err != nil {
			return classify("logging in to vault with "+s.login.Method, err)
		}
		if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
			return errors.New("logging in to vault: Vault answered without a token")
		}
	}
	s.mu.Lock()
	s.secret = sec
	s.mu.Unlock()
	s.client.SetToken(sec.Auth.ClientToken)
	s.log.InfoContext(ctx, "logged in to vault", "method", s.login.Method, "accessor", sec.Auth.Accessor,
		"ttl_seconds", sec.Auth.LeaseDuration, "renewable", sec.Auth.Renewable)
	return nil
}

// Run keeps the token alive until ctx ends: it renews a renewable token
// with a LifetimeWatcher and logs in again when renewal stops (max TTL
// reached, token revoked). A token without a TTL (a dev root token) needs
// nothing. A failed login is retried with backoff up to retryCap.
func (s *VaultSession) Run(ctx context.Context) {
	wait := time.Second
	for {
		s.mu.Lock()
		sec := s.secret
		s.mu.Unlock()
		if sec.Auth.LeaseDuration == 0 {
			<-ctx.Done()
			return
		}
		err := s.watch(ctx, sec)
		if ctx.Err() != nil {
			return
		}
		if s.login.Method == VaultAuthToken {
			s.log.ErrorContext(ctx, "Valet's vault token can no longer be renewed; give Valet a new one (or use approle, jwt or kubernetes auth)", "err", err)
			<-ctx.Done()
			return
		}
		s.log.InfoContext(ctx, "vault token renewal ended; logging in again", "reason", err)
		for {
			if err := s.Login(ctx); err == nil {
				wait = time.Second
				break
			} else {
				s.log.ErrorContext(ctx, "logging in to vault again failed", "err", err, "retry_in", wait)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, time.Minute)
		}
	}
}

// watch renews sec until it cannot be renewed any more, then returns why.
func (s *VaultSession) watch(ctx context.Context, sec *api.Secret) error {
	if !sec.Auth.Renewable {
		// Wait out most of its life, then log in again.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(sec.Auth.LeaseDuration) * time.Second * 4 / 5):
			return errors.New("token is not renewable")
		}
	}
	w, err := s.client.NewLifetimeWatcher(&api.LifetimeWatcherInput{Secret: sec})
	if err != nil {
		return err
	}
	go w.Start()
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-w.DoneCh():
			if err == nil {
				err = errors.New("token reached its max TTL")
			}
			return err
		case r := <-w.RenewCh():
			if r != nil && r.Secret != nil && r.Secret.Auth != nil {
				s.log.DebugContext(ctx, "renewed Valet's vault token", "ttl_seconds", r.Secret.Auth.LeaseDuration)
			}
		}
	}
}

// Ready reports whether Vault answers and Valet's token is valid, for
// /readyz.
func (s *VaultSession) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, DefaultVaultTimeout)
	defer cancel()
	if _, err := s.client.Auth().Token().LookupSelfWithContext(ctx); err != nil {
		return &broker.Error{Code: broker.CodeUnavailable, Message: "vault is unavailable", Err: classify("looking up Valet's vault token", err)}
	}
	return nil
}
