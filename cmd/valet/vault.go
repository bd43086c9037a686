package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/issuers"
)

// vaultWiring is what `valet serve` adds when the config has a vault block.
type vaultWiring struct {
	issuers []broker.Issuer
	ready   []func(context.Context) error
	session *issuers.VaultSession
	cfg     *VaultConfig
}

// setupVault logs Valet in to Vault and builds the Vault issuer. Without a
// vault block it returns an empty wiring.
func setupVault(ctx context.Context, cfg *Config, getenv func(string) string, log *slog.Logger) (*vaultWiring, error) {
	w := &vaultWiring{cfg: cfg.Vault}
	if cfg.Vault == nil {
		return w, nil
	}
	login, err := cfg.Vault.login(getenv)
	if err != nil {
		return nil, fmt.Errorf("vault.auth: %w", err)
	}
	w.session, err = issuers.NewVaultSession(ctx, issuers.VaultClientConfig{
		Address: cfg.Vault.Address, Namespace: cfg.Vault.Namespace, Timeout: time.Duration(cfg.Vault.Timeout),
		Login: login, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("vault: %w", err)
	}
	logins, err := cfg.Vault.databaseLogins(getenv)
	if err != nil {
		return nil, fmt.Errorf("vault.database_check_url: %w", err)
	}
	v, err := issuers.NewVault(issuers.VaultConfig{
		Client: w.session.Client(), Namespace: cfg.Vault.Namespace, DatabaseMount: cfg.Vault.DatabaseMount,
		Timeout: time.Duration(cfg.Vault.Timeout), DatabaseLogins: logins, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	w.issuers = []broker.Issuer{v}
	w.ready = []func(context.Context) error{w.session.Ready}
	return w, nil
}

// apply adds the Vault issuer to o: its readiness check, the renewal of
// Valet's own token, the retry of failed revocations and the reconciler
// of orphan tokens.
func (w *vaultWiring) apply(o *server.Options) {
	if w.session == nil {
		return
	}
	o.Issuers = append(o.Issuers, w.issuers...)
	o.Ready = append(o.Ready, w.ready...)
	o.ReconcileGrace = time.Duration(w.cfg.ReconcileGrace)
	o.RetryInterval = time.Duration(w.cfg.RetryInterval)
	o.ReconcileInterval = time.Duration(w.cfg.ReconcileInterval)
	o.Background = append(o.Background, w.session.Run)
}
