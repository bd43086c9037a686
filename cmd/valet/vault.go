package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/valet-dev/valet/broker"
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
	v, err := issuers.NewVault(issuers.VaultConfig{
		Client: w.session.Client(), Namespace: cfg.Vault.Namespace, DatabaseMount: cfg.Vault.DatabaseMount,
		Timeout: time.Duration(cfg.Vault.Timeout), Logger: log,
	})
	if err != nil {
		return nil, err
	}
	w.issuers = []broker.Issuer{v}
	w.ready = []func(context.Context) error{w.session.Ready}
	return w, nil
}

// reconcileGrace is the configured grace, or 0 (the Service's default).
func (w *vaultWiring) reconcileGrace() time.Duration {
	if w.cfg == nil {
		return 0
	}
	return time.Duration(w.cfg.ReconcileGrace)
}

// run starts the background work until ctx ends: keeping Valet's own token
// alive, retrying failed revocations and reconciling orphan tokens.
func (w *vaultWiring) run(ctx context.Context, svc *broker.Service) {
	if w.session == nil {
		return
	}
	go w.session.Run(ctx)
	go svc.RunRetries(ctx, time.Duration(w.cfg.RetryInterval))
	go svc.RunReconciler(ctx, time.Duration(w.cfg.ReconcileInterval))
}
