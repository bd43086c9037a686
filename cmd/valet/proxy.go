package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/proxy"
	"github.com/valet-dev/valet/proxy/pgwire"
)

// cmdProxy is `valet proxy`: secretless mode (docs/proxy.md).
func cmdProxy(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("proxy --templates PATHS --client ID (--identity-file FILE | --identity-command CMD | --dev-agent NAME) [flags]",
		"Run the secretless-mode proxy next to an agent: the agent declares tasks through it (POST /v1/tasks) and\n"+
			"gets a handle, never a credential; its calls to the templates' upstreams go through the proxy, which\n"+
			"attaches the task's credential per request and refuses them once Valet ends the task. See docs/proxy.md.")
	addr := fs.String("addr", envOr(e.getenv, "VALET_PROXY_ADDR", "127.0.0.1:8181"), "`address` the agent reaches the proxy on (env VALET_PROXY_ADDR)")
	server := fs.String("valet", envOr(e.getenv, "VALET_SERVER", "http://"+defaultAddr), "Valet's public `URL` (env VALET_SERVER)")
	tmpl := fs.String("templates", e.getenv("VALET_TEMPLATES"), "the template `files or folders` Valet serves, separated by the OS path list separator (env VALET_TEMPLATES)")
	client := fs.String("client", envOr(e.getenv, "VALET_PROXY_CLIENT", ""), "the proxy's introspection client `id` at Valet (env VALET_PROXY_CLIENT)")
	secretEnv := "VALET_PROXY_CLIENT_SECRET"
	audience := fs.String("audience", envOr(e.getenv, "VALET_PROXY_AUDIENCE", "valet-proxy"), "the proxy's `audience`: templates used through it list it (env VALET_PROXY_AUDIENCE)")
	idFile := fs.String("identity-file", e.getenv("VALET_PROXY_IDENTITY_FILE"), "`file` holding the workload identity token, read at every declaration (env VALET_PROXY_IDENTITY_FILE)")
	idCmd := fs.String("identity-command", e.getenv("VALET_PROXY_IDENTITY_COMMAND"), "shell `command` printing the workload identity token (env VALET_PROXY_IDENTITY_COMMAND)")
	devAgent := fs.String("dev-agent", "", "ask `valet dev`'s development issuer for an identity token of this agent `name` (development only)")
	auditFile := fs.String("audit", envOr(e.getenv, "VALET_PROXY_AUDIT", "valet-proxy-audit.jsonl"), "`file` of the proxy's hash-chained audit trail of refused requests (env VALET_PROXY_AUDIT)")
	logLevel := fs.String("log-level", envOr(e.getenv, "VALET_LOG_LEVEL", "info"), "log `level`")
	pgAddr := fs.String("postgres", e.getenv("VALET_PROXY_POSTGRES"), "`address` of a PostgreSQL listener for the agent: the task handle is the password, the session runs as the task's Vault database role (env VALET_PROXY_POSTGRES)")
	pgServer := fs.String("postgres-server", e.getenv("VALET_PROXY_POSTGRES_SERVER"), "`host:port` of the PostgreSQL server the tasks' database roles belong to (env VALET_PROXY_POSTGRES_SERVER)")
	pgTLS := fs.Bool("postgres-tls", false, "talk TLS to --postgres-server, verified against the system's roots and its host name")
	oauthFile := fs.String("oauth-providers", e.getenv("VALET_PROXY_OAUTH_PROVIDERS"), "YAML `file` of the OAuth providers that oauth:<provider> upstream credentials get tokens from (env VALET_PROXY_OAUTH_PROVIDERS)")
	if _, err := fs.parseN(args, 0); err != nil {
		return err
	}
	var problems []string
	if (*pgAddr == "") != (*pgServer == "") {
		problems = append(problems, "--postgres and --postgres-server go together")
	} else if *pgServer != "" {
		if _, _, err := net.SplitHostPort(*pgServer); err != nil {
			problems = append(problems, fmt.Sprintf("--postgres-server %q must be host:port", *pgServer))
		}
	}
	if *tmpl == "" {
		problems = append(problems, "--templates is required (the same template files Valet serves)")
	}
	if *client == "" || e.getenv(secretEnv) == "" {
		problems = append(problems, "--client and the environment variable "+secretEnv+" are required (an introspection client of Valet)")
	}
	sources := 0
	for _, s := range []string{*idFile, *idCmd, *devAgent} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		problems = append(problems, "give exactly one of --identity-file, --identity-command and --dev-agent")
	}
	if u, err := url.Parse(*server); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		problems = append(problems, fmt.Sprintf("--valet %q must be an http(s) URL", *server))
	}
	if len(problems) > 0 {
		return usageError("proxy: " + strings.Join(problems, "; "))
	}
	files, err := policy.ReadFiles(filepath.SplitList(*tmpl))
	if err != nil {
		return err
	}
	set, err := policy.Load(files, nil)
	if err != nil {
		return fmt.Errorf("templates:\n%w", err)
	}
	auditor, closer, err := audit.OpenFile(*auditFile)
	if err != nil {
		return fmt.Errorf("opening the proxy's audit file: %w", err)
	}
	defer closer.Close()
	var identity func(context.Context) (string, error)
	switch {
	case *idFile != "":
		identity = func(context.Context) (string, error) { return readTokenFile(*idFile) }
	case *idCmd != "":
		identity = func(ctx context.Context) (string, error) { return runTokenCommand(ctx, *idCmd) }
	default:
		identity = func(ctx context.Context) (string, error) { return devIdentity(ctx, *server, *devAgent) }
	}
	var providers []proxy.OAuthProvider
	if *oauthFile != "" {
		if providers, err = readOAuthProviders(*oauthFile); err != nil {
			return err
		}
	}
	log := newLogger(e.stderr, *logLevel, "text")
	p, err := proxy.New(proxy.Config{Valet: *server, Identity: identity, ClientID: *client, ClientSecret: e.getenv(secretEnv),
		Audience: *audience, Templates: set, Auditor: auditor, Logger: log, OAuthProviders: providers})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "valet proxy on http://%s for Valet at %s (templates: %s)\n", ln.Addr(), *server, strings.Join(set.Names(), ", "))
	if *pgAddr != "" {
		pln, err := net.Listen("tcp", *pgAddr)
		if err != nil {
			_ = ln.Close()
			return err
		}
		var tlsConfig *tls.Config
		if *pgTLS {
			host, _, _ := net.SplitHostPort(*pgServer)
			tlsConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
		}
		db := &pgwire.Server{Resolver: p.Database(*pgServer, tlsConfig), Logger: log}
		go func() { _ = db.Serve(pln) }()
		defer db.Close()
		fmt.Fprintf(e.stdout, "valet proxy: PostgreSQL for the agent on %s, sessions to %s as each task's own role\n", pln.Addr(), *pgServer)
	}
	return p.Serve(ctx, ln)
}

// oauthProvidersFile is the --oauth-providers file.
type oauthProvidersFile struct {
	Providers []struct {
		Name             string   `yaml:"name"`
		TokenURL         string   `yaml:"token_url"`
		ClientID         string   `yaml:"client_id"`
		ClientSecretFile string   `yaml:"client_secret_file"`
		Scopes           []string `yaml:"scopes"`
	} `yaml:"providers"`
}

// readOAuthProviders reads the --oauth-providers file: each provider's
// token endpoint (https, or http on loopback), client id, the file its
// client secret is read from (never the secret itself) and default
// scopes. It reports every problem at once.
func readOAuthProviders(path string) ([]proxy.OAuthProvider, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the OAuth providers: %w", err)
	}
	var f oauthProvidersFile
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var problems []string
	var out []proxy.OAuthProvider
	for i, p := range f.Providers {
		where := fmt.Sprintf("%s: providers[%d]", path, i)
		if !policy.ProviderNameRE.MatchString(p.Name) {
			problems = append(problems, fmt.Sprintf("%s.name %q: use 1 to 63 of a-z, 0-9, '_', '-', starting with a letter or digit", where, p.Name))
		}
		if u, err := url.Parse(p.TokenURL); err != nil || u.Host == "" || u.User != nil ||
			(u.Scheme != "https" && !(u.Scheme == "http" && isLoopbackHost(u.Hostname()))) {
			problems = append(problems, fmt.Sprintf("%s.token_url %q: must be an https URL (http only on loopback), without user info", where, p.TokenURL))
		}
		if p.ClientID == "" {
			problems = append(problems, where+".client_id: is required")
		}
		var secret string
		if p.ClientSecretFile == "" {
			problems = append(problems, where+".client_secret_file: is required (the secret is read from a file, never written here)")
		} else if secret, err = readSecretFile(p.ClientSecretFile); err != nil {
			problems = append(problems, fmt.Sprintf("%s.client_secret_file: %v", where, err))
		}
		out = append(out, proxy.OAuthProvider{Name: p.Name, TokenURL: p.TokenURL, ClientID: p.ClientID, ClientSecret: secret, Scopes: p.Scopes})
	}
	if len(problems) > 0 {
		return nil, errors.New("OAuth providers:\n  " + strings.Join(problems, "\n  "))
	}
	return out, nil
}

// readSecretFile reads a secret from a file, at most 4 KiB, trimmed.
func readSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4<<10+1))
	if err != nil {
		return "", err
	}
	if len(b) > 4<<10 {
		return "", errors.New("the file is larger than 4 KiB")
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", errors.New("the file is empty")
	}
	return s, nil
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// readTokenFile reads a token file (a Kubernetes projected token, a
// SPIFFE JWT-SVID written by an agent), at most 64 KiB.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading the identity token: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", fmt.Errorf("reading the identity token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", errors.New("the identity token file is empty")
	}
	return tok, nil
}

// runTokenCommand runs a shell command that prints a token, for 10 s at
// most.
func runTokenCommand(ctx context.Context, command string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", command).Output()
	if err != nil {
		return "", fmt.Errorf("running the identity command: %w", err)
	}
	tok := strings.TrimSpace(string(out))
	if tok == "" || len(tok) > 64<<10 {
		return "", errors.New("the identity command printed no token")
	}
	return tok, nil
}

// devIdentity asks `valet dev`'s development issuer for an agent token.
func devIdentity(ctx context.Context, server, agent string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(server, "/")+"/dev/token?agent="+url.QueryEscape(agent), nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return "", fmt.Errorf("asking valet dev for a token: %w", err)
	}
	defer resp.Body.Close()
	var body struct {
		Token string `json:"identity_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err != nil || resp.StatusCode != http.StatusOK || body.Token == "" {
		return "", fmt.Errorf("asking valet dev for a token: %s", resp.Status)
	}
	return body.Token, nil
}
