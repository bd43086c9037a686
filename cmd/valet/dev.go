package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/clientauth"
	"github.com/valet-dev/valet/examples"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/devidp"
	"github.com/valet-dev/valet/internal/server"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

// devClientSecret is the introspection secret of the "tool-server" client
// in `valet dev`. Development only, and printed on start.
const devClientSecret = "dev-secret-not-for-production"

// cmdDev runs the embedded default: in-memory ledger, a generated signing
// key, the built-in development issuer and the example templates.
func cmdDev(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("dev [flags] | dev token [flags] | dev idp [flags]",
		"Run Valet for development: a generated signing key, the built-in development issuer, the example\n"+
			"templates and an in-memory ledger (with --redis: Redis, and the admin API, controls and the audit stream).\n"+
			"Never for production. `valet dev token --help` and `valet dev idp --help` describe the other two.")
	addr := fs.String("addr", envOr(e.getenv, "VALET_ADDR", defaultAddr), "listen `address` (env VALET_ADDR)")
	tmplPaths := fs.String("templates", e.getenv("VALET_TEMPLATES"), "template `files or folders`, separated by the OS path list separator (env VALET_TEMPLATES; default: the built-in examples)")
	redisURL := fs.String("redis", e.getenv("VALET_REDIS_URL"), "use the Redis at this `URL` instead of the in-memory ledger (env VALET_REDIS_URL)")
	auditFile := fs.String("audit", e.getenv("VALET_AUDIT_FILE"), "audit `file` (env VALET_AUDIT_FILE; default: a new file under the temporary folder for each run)")
	logLevel := fs.String("log-level", envOr(e.getenv, "VALET_LOG_LEVEL", "info"), "log `level`: debug, info, warn or error")
	rollbackHosts := fs.String("rollback-hosts", "127.0.0.1:9090,localhost:9090", "comma-separated `hosts` whose undo webhooks `valet tasks rollback` may call (the example tool server's)")
	newSegment := fs.Bool("audit-new-segment", false, "if the audit file's chain does not verify, move it aside unchanged to FILE.<n> and start a new chain")
	resources := fs.String("resources", "", "YAML `file` of resource labels (id: {label: value}) for sensitive-tool conditions")
	if _, err := fs.parseN(args, 0); err != nil {
		return err
	}
	if *auditFile == "" {
		// A chain of its own for every run: two runs sharing one file
		// would interleave two chains and break both.
		dir, err := os.MkdirTemp("", "valet-dev-")
		if err != nil {
			return fmt.Errorf("creating the audit folder: %w", err)
		}
		*auditFile = filepath.Join(dir, "audit.jsonl")
	}
	stepUp, err := devAgentConfig(*resources)
	if err != nil {
		return err
	}
	log := newLogger(e.stderr, *logLevel, "text")
	redis.SetLogger(newRedisLogger(log))

	// Listen first: the public URL must carry the real port when --addr
	// asks for port 0.
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *addr, err)
	}
	defer ln.Close() // served below; closed here if start-up fails first
	publicURL := "http://" + ln.Addr().String()
	idp, err := devidp.New(publicURL+"/dev", time.Now)
	if err != nil {
		return err
	}
	key, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		return err
	}
	tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: publicURL, Keys: []issuers.SigningKey{{Private: key}}}, time.Now)
	if err != nil {
		return err
	}
	verifier, err := identity.New(ctx, []identity.IssuerConfig{{
		Name: "dev", IssuerURL: idp.Issuer(), Audiences: []string{devidp.Audience}, StaticJWKS: idp.JWKS(),
	}}, identity.Options{SelfIssuer: publicURL, Logger: log})
	if err != nil {
		return err
	}
	files, err := devTemplateFiles(*tmplPaths)
	if err != nil {
		return err
	}
	templates, err := policy.Load(files, []string{"dev"})
	if err != nil {
		return fmt.Errorf("templates:\n%w", err)
	}
	memLedger := revocation.NewMemoryLedger(time.Now, time.Hour)
	opts := server.Options{
		PublicURL: publicURL, Identity: verifier, Tokens: tokens, Ledger: memLedger, Templates: templates,
		Clients: []clientauth.Client{{ID: "tool-server", SecretSHA256: sha256Of(devClientSecret)}},
		Agent:   broker.AgentConfig{Limiter: memLedger}, Records: memLedger, StepUp: stepUp,
		Feed: memLedger.Feed(), DevIdP: idp.Handler(), ReapInterval: time.Second, Logger: log,
		OAuth:     &server.OAuthOptions{},
		Inventory: &server.InventoryOptions{Store: revocation.NewMemoryInventory(time.Now, 0)},
		Monitor:   &server.MonitorOptions{},
	}
	opts.StepUp.Actions = tokens
	ledgerName := "in-memory (lost on exit)"
	if *redisURL != "" {
		closeRedis, err := devRedis(ctx, &opts, *redisURL, splitList(*rollbackHosts), idp, log)
		if err != nil {
			return err
		}
		defer closeRedis()
		ledgerName = "redis " + *redisURL
	}
	auditor, closeAudit, err := openAudit(*auditFile, *newSegment, e.stdout)
	if err != nil {
		return err
	}
	defer closeAudit.Close()
	opts.Auditors = append([]broker.Auditor{auditor}, opts.Auditors...)
	srv, err := server.New(ctx, opts)
	if err != nil {
		return err
	}
	printWalkthrough(e.stdout, publicURL, ledgerName, *auditFile, templates)
	if opts.SSF != nil {
		fmt.Fprintf(e.stdout, "Shared Signals (SSF) transmitter: %s/.well-known/ssf-configuration (create a poll stream with an admin token from %s/dev/token?admin=NAME; docs/signals.md)\n", publicURL, publicURL)
	} else {
		fmt.Fprintf(e.stdout, "Shared Signals (SSF) transmitter: off (run with --redis: stream management goes through the admin API; docs/signals.md)\n")
	}
	if opts.Console != nil {
		fmt.Fprintf(e.stdout, "Web console: %s/console/ (sign in at the development issuer: any name, pick a group; docs/incident-response.md)\n\n", publicURL)
	}
	return srv.Run(ctx, ln)
}

// cmdDevIdP runs the development issuer alone, for trying `valet serve`
// without a real identity provider.
func cmdDevIdP(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("dev idp [--addr ADDR]", "Run only the development OIDC issuer, to try `valet serve` without a real identity provider.\nIts tokens are for development only: never trust it in production.")
	addr := fs.String("addr", "127.0.0.1:8081", "listen `address`")
	if _, err := fs.parseN(args, 0); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *addr, err)
	}
	idp, err := devidp.New("http://"+ln.Addr().String(), time.Now)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: idp.Handler(), ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: server.MaxHeaderBytes}
	fmt.Fprintf(e.stdout, "development issuer %s (never trust it in production)\n", idp.Issuer())
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// devTemplateFiles reads the given paths, or the built-in examples.
func devTemplateFiles(paths string) ([]policy.File, error) {
	if paths != "" {
		return policy.ReadFiles(strings.Split(paths, string(os.PathListSeparator)))
	}
	var files []policy.File
	err := fs.WalkDir(examples.Templates, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := examples.Templates.ReadFile(p)
		files = append(files, policy.File{Name: "examples/" + p, Data: data})
		return err
	})
	return files, err
}

func printWalkthrough(w io.Writer, url, ledger, auditFile string, set *policy.Set) {
	fmt.Fprintf(w, `Valet development server on %[1]s
  ledger:    %[2]s
  audit:     %[3]s
  templates: %[4]s
  issuer:    %[1]s/dev (development identity tokens; never trust it in production)

Try it in another shell:

  export VALET=%[1]s
  TOKEN=$(curl -s -X POST "$VALET/dev/token?agent=agent-7" | jq -r .identity_token)
  curl -s -X POST $VALET/v1/tasks -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"template":"support-triage","intent":"triage ticket 4521","tools":["tickets.read","kb.search"],"ttl_seconds":120}' | tee task.json
  TASK=$(jq -r .task.id task.json); TT=$(jq -r '.credentials[0].access_token' task.json)
  curl -s -u tool-server:%[5]s -d "token=$TT" $VALET/v1/introspect
  curl -s -X POST -H "Authorization: Bearer $TT" $VALET/v1/tasks/$TASK/complete
  curl -s -u tool-server:%[5]s -d "token=$TT" $VALET/v1/introspect

`, url, ledger, auditFile, strings.Join(set.Names(), ", "), devClientSecret)
}

// devSSF turns on the Shared Signals transmitter as `serve` does with
// ssf.transmitter.enabled (its streams and queues in Redis), poll delivery
// only: no push host is allowed. Stream management goes through the admin
// API, so a development admin token (`/dev/token?admin=NAME`) creates a
// poll stream a verifier follows. See docs/signals.md.
func devSSF(rc redis.UniversalClient, idp *devidp.IdP) (*server.SSFOptions, error) {
	store, err := revocation.NewRedisSSFStore(rc, "valet")
	if err != nil {
		return nil, fmt.Errorf("ssf store: %w", err)
	}
	return &server.SSFOptions{Store: store, IssuerURLs: map[string]string{"dev": idp.Issuer()}}, nil
}

// devRedis puts `valet dev --redis` on Redis: the Redis ledger instead of
// the memory one and the incident-response side that needs Redis (admin
// API for the dev admin issuer, controls, audit stream, metrics, the Redis
// revocation feed). The returned function closes the clients it opened.
func devRedis(ctx context.Context, opts *server.Options, url string, rollbackHosts []string, idp *devidp.IdP, log *slog.Logger) (func(), error) {
	rc, err := revocation.NewClient(url)
	if err != nil {
		return nil, fmt.Errorf("--redis: %w", err)
	}
	closers := []func(){func() { rc.Close() }}
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	fail := func(err error) (func(), error) { closeAll(); return nil, err }
	redisLedger, err := revocation.NewRedisLedger(rc, revocation.RedisOptions{})
	if err != nil {
		return fail(err)
	}
	opts.Ledger = redisLedger
	opts.Agent.Limiter, opts.Records = redisLedger, redisLedger
	inv, err := revocation.NewRedisInventory(rc, "valet", 0, nil)
	if err != nil {
		return fail(err)
	}
	opts.Inventory = &server.InventoryOptions{Store: inv}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_ = redisLedger.Ping(pctx) // read or start the ledger generation, as serve does
	cancel()
	if opts.Controls, err = revocation.NewControls(rc, "valet", 5*time.Second); err != nil {
		return fail(err)
	}
	trail, err := audit.NewRedisWriter(rc, audit.RedisWriterOptions{Prefix: "valet"})
	if err != nil {
		return fail(err)
	}
	opts.Epochs, opts.Auditors = redisLedger, []broker.Auditor{audit.NewLog(trail)}
	opts.Metrics = &server.MetricsOptions{Live: redisLedger.LiveCounts}
	devAdmin := AdminConfig{
		Issuers: []IssuerEntry{{Name: "dev-admin", IssuerURL: idp.Issuer(), Audiences: []string{devidp.AdminAudience}}},
		Roles: map[string]string{"admin": `"` + devidp.AdminGroup + `" in claims.groups`, "viewer": `"valet-viewers" in claims.groups`,
			"responder": `"` + devidp.ResponderGroup + `" in claims.groups`},
	}
	if opts.Admin, err = adminOptions(ctx, devAdmin, opts.PublicURL, []string{"dev"}, map[string][]byte{idp.Issuer(): idp.JWKS()},
		rollbackHosts, redisLedger, trail, log); err != nil {
		return fail(err)
	}
	if opts.Console, err = devConsole(ctx, rc, opts.PublicURL, idp); err != nil {
		return fail(err)
	}
	if opts.SSF, err = devSSF(rc, idp); err != nil {
		return fail(err)
	}
	feedClient := revocation.NewFeedClient(rc, fanout.Limits{}.WithDefaults().Readers)
	closers = append(closers, func() { feedClient.Close() })
	opts.Feed = revocation.NewFeed(feedClient, "valet")
	return closeAll, nil
}
