// Package vaulttest runs a real Vault dev server for one test, behind a
// loopback proxy that can cut Valet off (an outage) without losing Vault's
// in-memory state, and sets it up the way docs/vault.md tells ops to: the
// token role, the policies and, with a PostgreSQL server, the database
// secrets engine and a database role.
package vaulttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/valet-dev/valet/internal/pgtest"

	"github.com/valet-dev/valet/internal/proctest"
	"github.com/valet-dev/valet/internal/testkit"
)

// BinEnv names the vault binary to run; the default is <repo>/.bin/vault,
// which scripts/vault-build builds.
const BinEnv = "VALET_VAULT_BIN"

// Names of what Start sets up, as in docs/vault.md and deploy/vault: the
// policies and the database role's statements are read from deploy/vault,
// so the tests check the files ops use.
const (
	TokenRole    = "valet-task"
	DBRole       = "readonly"
	DBConnection = "valet-pg"
	TaskPolicy   = "valet-db"    // deploy/vault/task-db-policy.hcl
	ValetPolicy  = "valet"       // deploy/vault/valet-policy.hcl
	OtherPolicy  = "not-allowed" // exists, but the token role does not allow it
	// RoleMaxTTL is the token role's token_explicit_max_ttl.
	RoleMaxTTL = 24 * time.Hour
)

const startTimeout = 30 * time.Second

// Server is a Vault dev server owned by one test.
type Server struct {
	t         testing.TB
	dir       string
	rootToken string
	vaultAddr string            // Vault's own listener: for the test's checks
	proxy     *proxy            // what Valet talks to
	proc      *proctest.Process // nil while stopped
	root      *api.Client
}

// Options say what to set up beyond the token role and policies.
type Options struct {
	// Postgres, when set, gets the database secrets engine (mounted at
	// database/) with connection DBConnection and role DBRole.
	Postgres *pgtest.Server
	// DBDefaultTTL is the database role's default_ttl (default 1h).
	DBDefaultTTL time.Duration
}

// Bin returns the vault binary the tests run, failing the test with what
// to do when it is missing.
func Bin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv(BinEnv)
	if bin == "" {
		root, err := RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		bin = filepath.Join(root, ".bin", "vault")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("vault binary %s not found: run scripts/vault-build (scripts/test does it first), or set %s", bin, BinEnv)
	}
	return bin
}

// RepoRoot finds the repository root: the nearest folder upwards from the
// working directory that holds Valet's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module github.com/valet-dev/valet\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("vaulttest: cannot find the repository root (a go.mod of github.com/valet-dev/valet) above the working directory")
		}
		dir = parent
	}
}

// Start runs `vault server -dev` on a free loopback port, puts a proxy in
// front of it, and sets it up. Everything stops when the test ends.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	bin := Bin(t)
	s := &Server{t: t, dir: t.TempDir(), rootToken: "root-" + randomHex(12)}
	t.Cleanup(s.stop)
	var lastErr error
	for range 3 {
		port, err := testkit.FreePort()
		if err != nil {
			lastErr = err
			continue
		}
		s.vaultAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if lastErr = s.launch(bin); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("starting vault: %v", lastErr)
	}
	p, err := newProxy(s.vaultAddr)
	if err != nil {
		t.Fatal(err)
	}
	s.proxy = p
	t.Cleanup(p.close)
	s.root = s.newClient("http://"+s.vaultAddr, s.rootToken)
	if err := s.setup(o); err != nil {
		t.Fatalf("setting up vault: %v", err)
	}
	return s
}

func (s *Server) launch(bin string) error {
	cmd := exec.Command(bin, "server", "-dev", "-dev-root-token-id="+s.rootToken,
		"-dev-listen-address="+s.vaultAddr, "-dev-no-store-token", "-log-level=warn")
	cmd.Env = append(os.Environ(), "HOME="+s.dir, "VAULT_ADDR=", "VAULT_TOKEN=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	proc, err := proctest.Start(cmd, filepath.Join(s.dir, "vault.log"))
	if err != nil {
		return err
	}
	s.proc = proc
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := http.Get("http://" + s.vaultAddr + "/v1/sys/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if proc.Exited() {
			s.proc = nil
			return fmt.Errorf("vault exited at start; log:\n%s", s.logTail())
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("vault did not become healthy within %v; log:\n%s", startTimeout, s.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *Server) setup(o Options) error {
	root, err := RepoRoot()
	if err != nil {
		return err
	}
	valetHCL, err := os.ReadFile(filepath.Join(root, "deploy", "vault", "valet-policy.hcl"))
	if err != nil {
		return err
	}
	taskHCL, err := os.ReadFile(filepath.Join(root, "deploy", "vault", "task-db-policy.hcl"))
	if err != nil {
		return err
	}
	ctx := context.Background()
	sys := s.root.Sys()
	for name, rules := range map[string]string{
		ValetPolicy: string(valetHCL), TaskPolicy: string(taskHCL),
		OtherPolicy: `path "secret/*" { capabilities = ["read"] }`,
	} {
		if err := sys.PutPolicyWithContext(ctx, name, rules); err != nil {
			return fmt.Errorf("writing policy %s: %w", name, err)
		}
	}
	if _, err := s.root.Logical().WriteWithContext(ctx, "auth/token/roles/"+TokenRole, map[string]any{
		"allowed_policies":        []string{TaskPolicy},
		"orphan":                  false,
		"renewable":               false,
		"token_explicit_max_ttl":  int(RoleMaxTTL / time.Second),
		"token_type":              "service",
		"token_no_default_policy": true,
	}); err != nil {
		return fmt.Errorf("writing token role: %w", err)
	}
	if o.Postgres == nil {
		return nil
	}
	usernames, err := os.ReadFile(filepath.Join(root, "deploy", "vault", "db-username-template"))
	if err != nil {
		return err
	}
	if err := sys.MountWithContext(ctx, "database", &api.MountInput{Type: "database"}); err != nil {
		return fmt.Errorf("mounting database: %w", err)
	}
	if _, err := s.root.Logical().WriteWithContext(ctx, "database/config/"+DBConnection, map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": "postgresql://{{username}}:{{password}}@" + o.Postgres.Addr() + "/postgres?sslmode=disable",
		"username":       pgtest.SuperUser,
		"password":       o.Postgres.Password(),
		"allowed_roles":  []string{DBRole},
		// Usernames begin with the task token's display name, so Valet's
		// database check finds every login of a task.
		"username_template": string(usernames),
	}); err != nil {
		return fmt.Errorf("configuring database connection: %w", err)
	}
	creation, err := os.ReadFile(filepath.Join(root, "deploy", "vault", "db-creation.sql"))
	if err != nil {
		return err
	}
	revocation, err := os.ReadFile(filepath.Join(root, "deploy", "vault", "db-revocation.sql"))
	if err != nil {
		return err
	}
	renew, err := os.ReadFile(filepath.Join(root, "deploy", "vault", "db-renew.sql"))
	if err != nil {
		return err
	}
	ttl := o.DBDefaultTTL
	if ttl == 0 {
		ttl = time.Hour
	}
	if _, err := s.root.Logical().WriteWithContext(ctx, "database/roles/"+DBRole, map[string]any{
		"db_name":               DBConnection,
		"creation_statements":   []string{string(creation)},
		"revocation_statements": []string{string(revocation)},
		"renew_statements":      []string{string(renew)},
		"default_ttl":           int(ttl / time.Second),
		"max_ttl":               int(24 * time.Hour / time.Second),
	}); err != nil {
		return fmt.Errorf("writing database role: %w", err)
	}
	return nil
}

// Addr is the URL Valet should use: through the proxy, so Stop and Hang
// reach it.
func (s *Server) Addr() string { return "http://" + s.proxy.addr }

// Root is a client with the root token that talks to Vault directly, for
// the test's own checks and set-up; the proxy never cuts it off.
func (s *Server) Root() *api.Client { return s.root }

// ValetToken creates a token for Valet itself with only ValetPolicy (the
// policy docs/vault.md gives; not Vault's default policy), renewable, with
// ttl.
func (s *Server) ValetToken(ttl time.Duration) string {
	s.t.Helper()
	sec, err := s.root.Auth().Token().Create(&api.TokenCreateRequest{
		Policies: []string{ValetPolicy}, TTL: ttl.String(), DisplayName: "valet", NoParent: true, NoDefaultPolicy: true,
	})
	if err != nil {
		s.t.Fatalf("creating Valet's token: %v", err)
	}
	return sec.Auth.ClientToken
}

// Client returns a client for Valet: through the proxy, with token.
func (s *Server) Client(token string) *api.Client { return s.newClient(s.Addr(), token) }

func (s *Server) newClient(addr, token string) *api.Client {
	s.t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address = addr
	cfg.MaxRetries = 0
	cfg.Timeout = 5 * time.Second
	c, err := api.NewClient(cfg)
	if err != nil {
		s.t.Fatal(err)
	}
	c.SetToken(token)
	return c
}

// Stop cuts Valet off: the proxy refuses connections and drops open ones.
// Vault keeps running with all its state.
func (s *Server) Stop() { s.t.Helper(); s.proxy.setMode(modeDown) }

// Hang makes the proxy accept connections and never answer, as a Vault
// that is stuck would.
func (s *Server) Hang() { s.t.Helper(); s.proxy.setMode(modeHang) }

// Start ends an outage begun by Stop or Hang.
func (s *Server) Start() {
	s.t.Helper()
	if err := s.proxy.setMode(modeUp); err != nil {
		s.t.Fatalf("reopening the vault proxy: %v", err)
	}
}

// LookupAccessor looks a token up by accessor as root. Gone tokens give an
// error that IsGone recognises.
func (s *Server) LookupAccessor(accessor string) (*api.Secret, error) {
	return s.root.Auth().Token().LookupAccessor(accessor)
}

// IsGone reports whether err says the accessor or lease does not exist.
func IsGone(err error) bool {
	var re *api.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusBadRequest &&
		(strings.Contains(strings.Join(re.Errors, " "), "invalid accessor") || strings.Contains(strings.Join(re.Errors, " "), "invalid lease"))
}

// LeaseExists reports whether Vault still holds the lease.
func (s *Server) LeaseExists(leaseID string) (bool, error) {
	_, err := s.root.Logical().Write("sys/leases/lookup", map[string]any{"lease_id": leaseID})
	if IsGone(err) {
		return false, nil
	}
	return err == nil, err
}

func (s *Server) stop() {
	if s.proc != nil {
		s.proc.Stop(syscall.SIGTERM, 10*time.Second)
		s.proc = nil
	}
}

func (s *Server) logTail() string { return proctest.Tail(filepath.Join(s.dir, "vault.log"), 30) }

type proxyMode int

const (
	modeUp proxyMode = iota
	modeDown
	modeHang
)

// proxy forwards loopback TCP to Vault, and can refuse or black-hole
// connections on demand.
type proxy struct {
	addr    string
	backend string

	mu    sync.Mutex
	ln    net.Listener
	mode  proxyMode
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func newProxy(backend string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{addr: ln.Addr().String(), backend: backend, conns: map[net.Conn]bool{}}
	p.serve(ln)
	return p, nil
}

func (p *proxy) serve(ln net.Listener) {
	p.ln = ln
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			mode := p.mode
			p.conns[c] = true
			p.mu.Unlock()
			if mode == modeHang {
				continue // held open, never answered, closed by the next mode change
			}
			go p.forward(c)
		}
	}()
}

func (p *proxy) forward(c net.Conn) {
	defer p.drop(c)
	b, err := net.DialTimeout("tcp", p.backend, 2*time.Second)
	if err != nil {
		return
	}
	p.mu.Lock()
	p.conns[b] = true
	p.mu.Unlock()
	defer p.drop(b)
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, b); done <- struct{}{} }()
	<-done
}

func (p *proxy) drop(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// setMode switches modes, dropping every open connection. Down closes the
// listener (connections are refused); the others listen on the same port.
func (p *proxy) setMode(m proxyMode) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
	p.mode = m
	if m == modeDown {
		if p.ln != nil {
			p.ln.Close()
			p.ln = nil
		}
		return nil
	}
	if p.ln == nil {
		ln, err := net.Listen("tcp", p.addr)
		if err != nil {
			return err
		}
		p.serve(ln)
	}
	return nil
}

func (p *proxy) close() {
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
