package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/httpapi"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/openapi"
	"github.com/valet-dev/valet/revocation"
)

const defaultAddr = "127.0.0.1:8080"

// maxHeaderBytes caps a request's header block. What Valet needs is one
// identity or task token (limits.max_token_bytes, default 16 KiB, at most
// half of this cap), one DPoP proof (a compact JWS carrying a public JWK:
// about 1 KiB for P-256, 2.5 KiB for RSA-4096) and ordinary headers (a few
// KiB): 64 KiB leaves room for all with margin. A token between
// max_token_bytes and this cap gets the identity check's 401; a larger
// header block gets net/http's 431.
const maxHeaderBytes = 64 << 10

// cmdServe is production mode: Redis ledger, signing keys from files,
// trusted issuers and templates from the config file.
func cmdServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlags(stdout, "serve --config FILE [--addr ADDR]",
		"Run Valet in production mode: the Redis ledger, signing keys from files, and the trusted issuers and\n"+
			"templates of the config file (examples/serve.yaml is a commented example). Every configuration problem\n"+
			"is reported at once, before anything starts.")
	cfgPath := fs.String("config", getenv("VALET_CONFIG"), "config `file` (env VALET_CONFIG)")
	addr := fs.String("addr", "", "listen `address` (env VALET_ADDR; overrides the file)")
	newSegment := fs.Bool("audit-new-segment", false, "if the audit file's chain does not verify, move it aside unchanged to FILE.<n> and start a new chain (audit.new_segment)")
	if _, err := fs.parseN(args, 0); err != nil {
		return err
	}
	if *cfgPath == "" {
		return usageError("serve: --config is required")
	}
	cfg, err := loadServeConfig(*cfgPath, getenv)
	if err != nil {
		return err
	}
	if *addr != "" {
		cfg.Addr = *addr
	}
	log := newLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	redis.SetLogger(newRedisLogger(log))

	redisClient, err := revocation.NewClient(cfg.Redis.URL)
	if err != nil {
		return fmt.Errorf("redis.url: %w", err)
	}
	defer redisClient.Close()
	pingCtx, cancelPing := context.WithTimeout(ctx, 2*time.Second)
	if err := redisClient.Ping(pingCtx).Err(); err != nil {
		log.Error("redis is unreachable at start: Valet serves, answers /readyz with 503 and refuses to issue until it is reachable", "err", err)
	}
	cancelPing()
	ledger, err := revocation.NewRedisLedger(redisClient, revocation.RedisOptions{Prefix: cfg.Redis.Prefix, Retention: time.Duration(cfg.Redis.Retention), Logger: log})
	if err != nil {
		return err
	}
	// Read (or start) the ledger generation now, so a first start's global
	// epoch predates every credential this process issues; if Redis is
	// down, the first round trip that reaches it does this.
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_ = ledger.Ping(pctx)
	cancel()
	keys, err := loadSigningKeys(cfg.Signing)
	if err != nil {
		return err
	}
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: cfg.PublicURL, Algorithm: cfg.Signing.Algorithm, Keys: keys, ActiveKID: cfg.Signing.ActiveKID}, time.Now)
	if err != nil {
		return fmt.Errorf("signing: %w", err)
	}
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
		return fmt.Errorf("issuers: %w", err)
	}
	templates, err := loadTemplatePaths(cfg.Templates.Paths, names)
	if err != nil {
		return err
	}
	auditor, closeAudit, err := openAudit(cfg.Audit.File, cfg.Audit.NewSegment || *newSegment, stdout)
	if err != nil {
		return err
	}
	defer closeAudit.Close()
	secrets, err := cfg.clientSecrets(getenv)
	if err != nil {
		return err
	}
	vw, err := setupVault(ctx, cfg, getenv, log)
	if err != nil {
		return err
	}
	retryQ, err := revocation.NewRedisQueue(redisClient, revocation.RedisOptions{Prefix: cfg.Redis.Prefix, Retention: time.Duration(cfg.Redis.Retention)})
	if err != nil {
		return err
	}
	clients := make([]broker.Client, len(secrets))
	for i, s := range secrets {
		clients[i] = broker.Client{ID: s.id, SecretSHA256: s.sum}
	}
	agentCfg, err := cfg.agentConfig(getenv)
	agentCfg.EventRetention = time.Duration(cfg.Redis.Retention)
	if err != nil {
		return err
	}
	// Metrics label declarations by the templates in force, which a reload
	// changes; svc is set just below.
	var svc *broker.Service
	known := func(n string) bool {
		set := templates
		if svc != nil {
			set = svc.Templates()
		}
		_, ok := set.Get(n)
		return ok
	}
	pending := func() float64 {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		n, err := retryQ.Pending(pctx)
		if err != nil {
			return -1 // the queue cannot be read: visibly wrong, never a reassuring 0
		}
		return float64(n)
	}
	inc, audited, err := newIncident(ctx, redisClient, audit.RedisWriterOptions{Prefix: cfg.Redis.Prefix,
		Retention: time.Duration(cfg.Audit.StreamRetention), MaxLen: cfg.Audit.StreamMaxLen}, auditor, known, pending, ledger, log)
	if err != nil {
		return err
	}
	svc, err = broker.NewService(broker.Config{
		Identity: verifier, Tokens: tokens, Ledger: ledger, Auditor: audited, Templates: templates,
		Clients: clients, IntrospectionClients: cfg.introspectionRules(), Logger: log, Agent: agentCfg,
		Controls: inc.controls, Epochs: ledger,
		Issuers: vw.issuers, RevocationQueue: retryQ, ReconcileGrace: vw.reconcileGrace(),
		ReaperLag: inc.metrics.ReaperLag(),
	})
	if err != nil {
		return err
	}
	inc.rollbackHosts = cfg.Rollback.AllowedHosts
	if err := inc.startAdmin(ctx, cfg.Admin, cfg.PublicURL, svc, ledger, names, nil, log); err != nil {
		return err
	}
	if err := inc.startFeed(ctx, redisClient, cfg.Redis.Prefix, cfg.Feed.limits(), log); err != nil {
		return err
	}
	metricsSecret := ""
	if cfg.Metrics.BearerSecretEnv != "" {
		metricsSecret = getenv(cfg.Metrics.BearerSecretEnv)
	}
	if cfg.Metrics.Listen != "" {
		if err := serveMetrics(ctx, cfg.Metrics.Listen, metricsHandler(inc.metrics, metricsSecret), log); err != nil {
			return err
		}
	}
	handler, err := httpapi.Handler(httpapi.Options{
		Service: svc, Issuer: cfg.PublicURL, JWKS: tokens.JWKS(), SigningAlgs: tokens.Algorithms(), OpenAPI: openapi.Spec,
		Ready: append([]func(context.Context) error{verifier.Ready}, vw.ready...), MaxBodyBytes: cfg.Limits.MaxBodyBytes,
		RequestTimeout: time.Duration(cfg.Limits.RequestTimeout), Logger: log,
		Admin: inc.admin, Feed: inc.feed, FeedHub: inc.hub, Metrics: inc.httpMetrics(cfg.Metrics, metricsSecret),
	})
	if err != nil {
		return err
	}
	guard := &reloadGuard{settle: templateSettle, now: time.Now}
	reload := func() error {
		files, err := broker.ReadTemplateFiles(cfg.Templates.Paths)
		if err != nil {
			return fmt.Errorf("templates: %w", err)
		}
		set, err := broker.LoadTemplates(files, names)
		if err != nil {
			return fmt.Errorf("templates:\n%w", err)
		}
		if err := guard.check(svc.Templates(), set, files); err != nil {
			return err
		}
		svc.SetTemplates(set)
		log.Info("templates reloaded", "templates", set.Names())
		return nil
	}
	go watchTemplates(ctx, cfg.Templates.Paths, *cfg.Templates.Watch, reload, log)
	vw.run(ctx, svc)
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.Addr, err)
	}
	ver, rev := buildVersion()
	return serveHTTP(ctx, ln, handler, svc, time.Duration(cfg.Reaper.Interval), log, func(a net.Addr) {
		log.Info("valet serving", "addr", a.String(), "public_url", cfg.PublicURL, "templates", templates.Names(), "version", ver, "commit", rev)
	})
}

// serveHTTP serves h on the bound listener ln, runs the reaper and shuts
// both down when ctx ends. ready, when set, is called just before serving.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler, svc *broker.Service, reapEvery time.Duration, log *slog.Logger, ready func(net.Addr)) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 15 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: maxHeaderBytes,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	reapCtx, stopReaper := context.WithCancel(ctx)
	defer stopReaper()
	go svc.RunReaper(reapCtx, reapEvery)
	if ready != nil {
		ready(ln.Addr())
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
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

func loadTemplatePaths(paths, issuerNames []string) (*broker.TemplateSet, error) {
	files, err := broker.ReadTemplateFiles(paths)
	if err != nil {
		return nil, fmt.Errorf("templates: %w", err)
	}
	set, err := broker.LoadTemplates(files, issuerNames)
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

// watchTemplates reloads templates on SIGHUP and, if watch is set, when a
// file in their folders changes. A failed reload keeps the last good set.
func watchTemplates(ctx context.Context, paths []string, watch bool, reload func() error, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var events <-chan fsnotify.Event
	if watch {
		w, err := fsnotify.NewWatcher()
		if err != nil {
			log.Error("cannot watch template files; reload with SIGHUP", "err", err)
		} else {
			defer w.Close()
			for _, p := range paths {
				dir := p
				if st, err := os.Stat(p); err == nil && !st.IsDir() {
					dir = filepath.Dir(p)
				}
				if err := w.Add(dir); err != nil {
					log.Error("cannot watch template folder", "path", dir, "err", err)
				}
			}
			events = w.Events
		}
	}
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			debounce = time.After(0)
		case ev := <-events:
			if ext := filepath.Ext(ev.Name); ext == ".yaml" || ext == ".yml" {
				debounce = time.After(200 * time.Millisecond)
			}
		case <-debounce:
			debounce = nil
			err := reload()
			var unsettled *errUnsettled
			switch {
			case errors.As(err, &unsettled):
				log.Warn("template reload deferred; still serving the last good set", "reason", err.Error(), "retry_in", unsettled.retry)
				debounce = time.After(unsettled.retry)
			case err != nil:
				log.Error("template reload failed; still serving the last good set", "err", err)
			}
		}
	}
}

// templateSettle is how long template files must stay unchanged before a
// reload that removes templates is applied: an editor's truncate-then-write
// or a file moved away and back must not take templates away for a moment.
const templateSettle = time.Second

// reloadGuard keeps the last good template set through a reload that would
// take templates away while the files are still changing. Additions and
// changes apply at once. A reload that removes some templates (a file
// deleted, emptied, cut short mid-write) applies only once the files have
// read the same for the settle time; one that would remove every template
// never applies (an empty set makes every declaration 403). Not safe for
// concurrent use: the watcher calls it from one goroutine.
type reloadGuard struct {
	settle time.Duration
	now    func() time.Time

	pending [32]byte // hash of the files of a deferred removal
	since   time.Time
}

// errUnsettled defers a reload: retry after retry.
type errUnsettled struct {
	msg   string
	retry time.Duration
}

func (e *errUnsettled) Error() string { return e.msg }

func (g *reloadGuard) check(cur, next *broker.TemplateSet, files []broker.TemplateFile) error {
	if len(next.Names()) == 0 && len(cur.Names()) > 0 {
		return fmt.Errorf("the template files hold no template (a file vanished, is empty or is being written); refusing to remove every template: %w",
			&errUnsettled{msg: "retrying", retry: g.settle})
	}
	var removed []string
	for _, n := range cur.Names() {
		if _, ok := next.Get(n); !ok {
			removed = append(removed, n)
		}
	}
	if len(removed) == 0 {
		g.since = time.Time{}
		return nil
	}
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%d\x00", f.Name, len(f.Data))
		h.Write(f.Data)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	now := g.now()
	if g.since.IsZero() || sum != g.pending {
		g.pending, g.since = sum, now
	}
	if wait := g.settle - now.Sub(g.since); wait > 0 {
		return &errUnsettled{msg: fmt.Sprintf("the reload would remove templates %v; applying it once the files have not changed for %v", removed, g.settle), retry: wait}
	}
	g.since = time.Time{}
	return nil
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
	if id := broker.RequestID(ctx); id != "" {
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
