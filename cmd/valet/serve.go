package main

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/requestid"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

const defaultAddr = "127.0.0.1:8080"

// cmdServe is production mode: Redis ledger, signing keys from files,
// trusted issuers and templates from the config file.
func cmdServe(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("serve --config FILE [--addr ADDR]",
		"Run Valet in production mode: the Redis ledger, signing keys from files, and the trusted issuers and\n"+
			"templates of the config file (examples/serve.yaml is a commented example). Every configuration problem\n"+
			"is reported at once, before anything starts.")
	cfgPath := fs.String("config", e.getenv("VALET_CONFIG"), "config `file` (env VALET_CONFIG)")
	addr := fs.String("addr", "", "listen `address` (env VALET_ADDR; overrides the file)")
	newSegment := fs.Bool("audit-new-segment", false, "if the audit file's chain does not verify, move it aside unchanged to FILE.<n> and start a new chain (audit.new_segment)")
	if _, err := fs.parseN(args, 0); err != nil {
		return err
	}
	if *cfgPath == "" {
		return usageError("serve: --config is required")
	}
	cfg, err := loadServeConfig(*cfgPath, e.getenv)
	if err != nil {
		return err
	}
	if *addr != "" {
		cfg.Addr = *addr
	}
	log := newLogger(e.stderr, cfg.Log.Level, cfg.Log.Format)
	redis.SetLogger(newRedisLogger(log))

	redisClient, ledger, trail, stream, err := serveRedis(ctx, cfg, e.getenv, log)
	if err != nil {
		return err
	}
	defer redisClient.Close()
	keys, err := loadSigningKeys(cfg.Signing)
	if err != nil {
		return err
	}
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: cfg.PublicURL, Algorithm: cfg.Signing.Algorithm, Keys: keys, ActiveKID: cfg.Signing.ActiveKID}, time.Now)
	if err != nil {
		return fmt.Errorf("signing: %w", err)
	}
	verifier, names, err := serveIdentity(ctx, cfg, log)
	if err != nil {
		return err
	}
	names = cfg.agentIssuerNames(names)
	oauthOpts, err := cfg.oauthOptions()
	if err != nil {
		return err
	}
	templates, err := loadTemplatePaths(cfg.Templates.Paths, names)
	if err != nil {
		return err
	}
	auditor, closeAudit, err := openAudit(cfg.Audit.File, cfg.Audit.NewSegment || *newSegment, e.stdout)
	if err != nil {
		return err
	}
	if closeAudit, err = applyAuditSync(auditor, closeAudit, cfg.Audit, log); err != nil {
		return err
	}
	defer closeAudit.Close()
	secrets, err := cfg.clientSecrets(e.getenv)
	if err != nil {
		return err
	}
	vw, err := setupVault(ctx, cfg, e.getenv, log)
	if err != nil {
		return err
	}
	retryQ, err := revocation.NewRedisQueue(redisClient, revocation.RedisOptions{Prefix: cfg.Redis.Prefix, Retention: time.Duration(cfg.Redis.Retention)})
	if err != nil {
		return err
	}
	clients := make([]clientauth.Client, len(secrets))
	for i, s := range secrets {
		clients[i] = clientauth.Client{ID: s.id, SecretSHA256: s.sum}
	}
	stepUp, err := cfg.agentConfig(e.getenv)
	if err != nil {
		return err
	}
	stepUp.Actions = tokens
	agentCfg := broker.AgentConfig{Limiter: ledger}
	controls, err := revocation.NewControls(redisClient, cfg.Redis.Prefix, 5*time.Second)
	if err != nil {
		return err
	}
	admin, err := adminOptions(ctx, cfg.Admin, cfg.PublicURL, names, nil, cfg.Rollback.AllowedHosts, ledger, trail, log)
	if err != nil {
		return err
	}
	// The revocation feed reads through a Redis client of its own, so that
	// followers never hold a connection of the ledger's pool.
	feedLimits := cfg.Feed.limits().WithDefaults()
	feedClient, err := cfg.Redis.feedClient(redisClient, e.getenv, feedLimits.Readers)
	if err != nil {
		return err
	}
	defer feedClient.Close()
	metricsOpts := &server.MetricsOptions{Live: ledger.LiveCounts}
	if cfg.Metrics.BearerSecretEnv != "" {
		metricsOpts.BearerSecret = e.getenv(cfg.Metrics.BearerSecretEnv)
	}
	if cfg.Metrics.Listen != "" {
		if metricsOpts.Listener, err = net.Listen("tcp", cfg.Metrics.Listen); err != nil {
			return fmt.Errorf("metrics.listen %s: %w", cfg.Metrics.Listen, err)
		}
	}
	labels, err := cfg.Inventory.labeler()
	if err != nil {
		return err
	}
	agents, err := revocation.NewRedisInventory(redisClient, cfg.Redis.Prefix, time.Duration(cfg.Inventory.Retention), nil)
	if err != nil {
		return err
	}
	opts := server.Options{
		PublicURL: cfg.PublicURL, Identity: verifier, Tokens: tokens, Ledger: ledger, Epochs: ledger, Loss: ledger, Controls: controls,
		Queue: retryQ, Auditors: []broker.Auditor{auditor, stream}, Templates: templates,
		Reload:  &server.TemplateReload{Paths: cfg.Templates.Paths, Watch: *cfg.Templates.Watch, Issuers: names},
		Clients: clients, IntrospectionClients: cfg.introspectionRules(), Agent: agentCfg, Records: ledger, StepUp: stepUp, Admin: admin,
		Feed: revocation.NewFeed(feedClient, cfg.Redis.Prefix), FeedLimits: feedLimits, Metrics: metricsOpts,
		EventRetention: time.Duration(cfg.Redis.Retention), Ready: []func(context.Context) error{verifier.Ready}, MaxBodyBytes: cfg.Limits.MaxBodyBytes,
		RequestTimeout: time.Duration(cfg.Limits.RequestTimeout), ReapInterval: time.Duration(cfg.Reaper.Interval), Logger: log,
		OAuth: oauthOpts, Inventory: &server.InventoryOptions{Store: agents, Labels: labels},
		Monitor: &server.MonitorOptions{Buffer: cfg.Monitor.Buffer, MaxAgents: cfg.Monitor.MaxAgents, AlertHosts: cfg.Monitor.AlertHosts},
	}
	if opts.SSF, err = cfg.ssfOptions(redisClient, e.getenv); err != nil {
		return err
	}
	if err := cfg.interactiveOptions(oauthOpts, redisClient, e.getenv); err != nil {
		return err
	}
	if oauthOpts.Interactive != nil {
		if oauthOpts.Interactive.LoginSealKeys, err = loginSealKeys(keys, cfg.Signing.ActiveKID); err != nil {
			return fmt.Errorf("oauth.interactive: %w", err)
		}
	}
	if opts.Console, err = consoleOptions(ctx, cfg, e.getenv, redisClient); err != nil {
		return err
	}
	vw.apply(&opts)
	srv, err := server.New(ctx, opts)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Addr, err)
	}
	ver, rev := buildVersion()
	log.Info("valet serving", "addr", ln.Addr().String(), "public_url", cfg.PublicURL, "templates", templates.Names(), "version", ver, "commit", rev)
	return srv.Run(ctx, ln)
}

// serveRedis opens the Redis client and ledger of `serve`, and the audit
// stream (trail, and stream, the chain written to it). Redis down at
// start is one clear log line, not a refusal: Valet serves, /readyz says
// 503 and nothing is issued until Redis answers.
//
// The ledger writes a grant's line of the stream chain in its Record
// script (revocation.RedisOptions.Trail), so a declaration is one Redis
// round trip; every other event reaches the stream through the chain as
// an auditor.
func serveRedis(ctx context.Context, cfg *Config, getenv func(string) string, log *slog.Logger) (
	rc redis.UniversalClient, ledger *revocation.RedisLedger, trail *audit.RedisWriter, stream *audit.Log, err error) {
	rc, err = revocation.NewModeClient(cfg.Redis.modeOptions(getenv))
	if err != nil {
		if cfg.Redis.single() {
			return nil, nil, nil, nil, fmt.Errorf("redis.url: %w", err)
		}
		return nil, nil, nil, nil, fmt.Errorf("redis: %w", err)
	}
	durable, err := cfg.Redis.waiter()
	if err != nil {
		rc.Close()
		return nil, nil, nil, nil, err
	}
	pingCtx, cancelPing := context.WithTimeout(ctx, 2*time.Second)
	if err := rc.Ping(pingCtx).Err(); err != nil {
		log.Error("redis is unreachable at start: Valet serves, answers /readyz with 503 and refuses to issue until it is reachable", "err", err)
	}
	cancelPing()
	trail, err = audit.NewRedisWriter(rc, audit.RedisWriterOptions{Prefix: cfg.Redis.Prefix,
		Retention: time.Duration(cfg.Audit.StreamRetention), MaxLen: cfg.Audit.StreamMaxLen, Durable: durable})
	if err != nil {
		rc.Close()
		return nil, nil, nil, nil, err
	}
	stream = audit.NewLog(trail)
	ledger, err = revocation.NewRedisLedger(rc, revocation.RedisOptions{Prefix: cfg.Redis.Prefix, Retention: time.Duration(cfg.Redis.Retention),
		Logger: log, Durable: durable, Trail: stream})
	if err != nil {
		rc.Close()
		return nil, nil, nil, nil, err
	}
	// Read (or start) the ledger generation now, so a first start's global
	// epoch predates every credential this process issues; if Redis is
	// down, the first round trip that reaches it does this.
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_ = ledger.Ping(pctx)
	cancel()
	return rc, ledger, trail, stream, nil
}

// serveIdentity builds the verifier of the agents' (and users') trusted
// issuers, and returns their configured names.
func serveIdentity(ctx context.Context, cfg *Config, log *slog.Logger) (*identity.Verifier, []string, error) {
	trusted := make([]identity.IssuerConfig, len(cfg.Issuers))
	names := make([]string, len(cfg.Issuers))
	for i, is := range cfg.Issuers {
		trusted[i] = identity.IssuerConfig{Name: is.Name, IssuerURL: is.IssuerURL, Audiences: is.Audiences, Algorithms: is.Algorithms,
			SubjectClaim: is.SubjectClaim, Condition: is.Condition, JWKSURL: is.JWKSURL, Types: is.Types}
		names[i] = is.Name
	}
	verifier, err := identity.New(ctx, trusted, identity.Options{
		Leeway: time.Duration(cfg.Identity.Leeway), MaxTokenBytes: cfg.Limits.MaxTokenBytes,
		RefreshInterval: time.Duration(cfg.Identity.RefreshInterval), SelfIssuer: cfg.PublicURL, Logger: log})
	if err != nil {
		return nil, nil, fmt.Errorf("issuers: %w", err)
	}
	return verifier, names, nil
}

func loadSigningKeys(sc SigningConfig) ([]issuers.SigningKey, error) {
	keys := make([]issuers.SigningKey, 0, len(sc.Keys))
	var errs []error
	for i, k := range sc.Keys {
		data, err := os.ReadFile(k.File)
		if err != nil {
			errs = append(errs, fmt.Errorf("signing.keys[%d].file: %w", i, err))
			continue
		}
		signer, err := issuers.LoadSigningKeyPEM(data)
		if err != nil {
			errs = append(errs, fmt.Errorf("signing.keys[%d].file %s: %w", i, k.File, err))
			continue
		}
		sk := issuers.SigningKey{KID: k.KID, Private: signer}
		if k.Retired {
			sk = issuers.SigningKey{KID: k.KID, Public: signer.Public()}
		}
		keys = append(keys, sk)
	}
	return keys, errors.Join(errs...)
}

// loginSealKeys derives the keys that seal sign-ins under way into their
// browser cookie from the signing keys every replica already shares: the
// active key's first (it seals), then the other unretired ones (they
// open). A sign-in started under a key that was retired since must start
// again.
func loginSealKeys(keys []issuers.SigningKey, active string) ([][]byte, error) {
	ordered := slices.Clone(keys)
	slices.SortStableFunc(ordered, func(a, b issuers.SigningKey) int {
		return cmp.Compare(boolInt(b.KID == active), boolInt(a.KID == active))
	})
	var out [][]byte
	for _, k := range ordered {
		if k.Private == nil {
			continue
		}
		der, err := x509.MarshalPKCS8PrivateKey(k.Private)
		if err != nil {
			return nil, fmt.Errorf("signing key %s: %w", k.KID, err)
		}
		sk, err := oauth.DeriveLoginSealKey(der)
		if err != nil {
			return nil, err
		}
		out = append(out, sk)
	}
	if len(out) == 0 {
		return nil, errors.New("no unretired signing key to derive the sign-in seal from")
	}
	return out, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func loadTemplatePaths(paths, issuerNames []string) (*policy.Set, error) {
	files, err := policy.ReadFiles(paths)
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	set, err := policy.Load(files, issuerNames)
	if err != nil {
		return nil, fmt.Errorf("templates:\n%w", err)
	}
	return set, nil
}

// openAudit opens the audit sink: "stdout" or a file whose existing chain is
// continued (or, with newSegment, a new chain when it does not verify).
func openAudit(sink string, newSegment bool, stdout io.Writer) (*audit.Log, io.Closer, error) {
	if sink == "stdout" {
		return audit.NewLog(stdout), io.NopCloser(nil), nil
	}
	if err := os.MkdirAll(filepath.Dir(sink), 0o700); err != nil {
		return nil, nil, fmt.Errorf("audit.file: %w", err)
	}
	l, c, err := audit.OpenFileWith(sink, audit.FileOptions{NewSegment: newSegment})
	if err != nil {
		return nil, nil, fmt.Errorf("audit.file: %w", err)
	}
	return l, c, nil
}

// newLogger writes JSON (production) or text (dev) lines, each carrying the
// request id of the request it is about.
func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv, ReplaceAttr: boundAttr}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if format == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(requestIDHandler{h})
}

// boundAttr is the one bound on log text: every string value, and every
// error or other value printed as text, is cut to broker.MaxAuditString
// bytes, so no client input (a client id, a claim quoted in an error) makes
// a log line large.
func boundAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); len(s) > broker.MaxAuditString {
			a.Value = slog.StringValue(broker.Bound(s, broker.MaxAuditString))
		}
	case slog.KindAny:
		switch v := a.Value.Any().(type) {
		case error:
			a.Value = slog.StringValue(broker.Bound(v.Error(), broker.MaxAuditString))
		case fmt.Stringer:
			a.Value = slog.StringValue(broker.Bound(v.String(), broker.MaxAuditString))
		}
	}
	return a
}

// requestIDHandler adds request_id from the context to every record that
// does not carry one already.
type requestIDHandler struct{ slog.Handler }

func (h requestIDHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := requestid.From(ctx); id != "" {
		has := false
		r.Attrs(func(a slog.Attr) bool {
			has = a.Key == "request_id"
			return !has
		})
		if !has {
			r.AddAttrs(slog.String("request_id", id))
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h requestIDHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(as)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}
