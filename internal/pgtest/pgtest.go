// Package pgtest runs a private PostgreSQL cluster for one test, with
// scram-sha-256 password authentication over loopback TCP, so a login test
// really checks the password (unlike a trust-auth server).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/valet-dev/valet/internal/proctest"
	"github.com/valet-dev/valet/internal/testkit"
)

// BinDirEnv names the folder of initdb and postgres, if not the default.
const BinDirEnv = "VALET_PG_BIN"

// DefaultBinDir is where Debian's postgresql-15 package puts its binaries.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// SuperUser is the cluster's superuser name.
const SuperUser = "postgres"

const startTimeout = 20 * time.Second

// Server is a running cluster owned by one test.
type Server struct {
	t        testing.TB
	dir      string
	port     int
	bin      string
	cred     *syscall.Credential
	password string
	proc     *proctest.Process // nil while stopped
}

// Start creates a cluster in a fresh folder (initdb --auth=scram-sha-256
// with a random superuser password), starts postgres on a free loopback
// port, waits until the superuser can log in, and stops and removes it all
// when the test ends. The binaries refuse to run as root, so when the test
// runs as root they run as the system user "postgres". Missing binaries
// fail the test with what to install.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := os.Getenv(BinDirEnv)
	if bin == "" {
		bin = DefaultBinDir
	}
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("PostgreSQL binary %s not found in %s: install the Debian package postgresql (or set %s)", b, bin, BinDirEnv)
		}
	}
	cred, err := runAs()
	if err != nil {
		t.Fatal(err)
	}
	// t.TempDir is private to root; the cluster needs a folder its own
	// user can enter.
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	s := &Server{t: t, dir: dir, bin: bin, cred: cred, password: randomHex(16)}
	pwfile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwfile, []byte(s.password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		if err := os.Chown(pwfile, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", s.data(), "-U", SuperUser, "--pwfile", pwfile,
		"--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	_ = os.Remove(pwfile)
	t.Cleanup(s.stop)

	var lastErr error
	for range 3 {
		if s.port, lastErr = testkit.FreePort(); lastErr != nil {
			continue
		}
		if lastErr = s.launch(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("starting postgres: %v\nlog:\n%s", lastErr, s.logTail())
	return nil
}

// launch starts postgres on s.port and waits until it accepts a login.
func (s *Server) launch() error {
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), "-D", s.data(), "-p", strconv.Itoa(s.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+s.dir,
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=50",
		"-c", "logging_collector=off", "-c", "log_min_messages=warning")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred}
	var err error
	if s.proc, err = proctest.Start(cmd, filepath.Join(s.dir, "postgres.log")); err != nil {
		return err
	}
	if err = s.waitReady(); err != nil {
		s.stop()
	}
	return err
}

// Stop shuts the server down (an outage); its data stays for Restart.
func (s *Server) Stop() { s.t.Helper(); s.stop() }

// Restart starts a stopped server again on the same port with its data.
func (s *Server) Restart() {
	s.t.Helper()
	if s.proc != nil {
		return
	}
	if err := s.launch(); err != nil {
		s.t.Fatalf("restarting postgres: %v\nlog:\n%s", err, s.logTail())
	}
}

// Exec runs sql as the superuser, in database postgres.
func (s *Server) Exec(ctx context.Context, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL(SuperUser, s.password))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

func (s *Server) data() string { return filepath.Join(s.dir, "data") }

func (s *Server) waitReady() error {
	deadline := time.Now().Add(startTimeout)
	for {
		err := s.Login(context.Background(), SuperUser, s.password)
		if err == nil {
			return nil
		}
		if s.proc.Exited() {
			return errors.New("postgres exited at start")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept a login within %v: %w", startTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Password is the superuser's password.
func (s *Server) Password() string { return s.password }

// URL is a connection URL for user and password to database postgres over
// TCP, without TLS.
func (s *Server) URL(username, password string) string {
	u := url.URL{Scheme: "postgresql", User: url.UserPassword(username, password), Host: s.Addr(), Path: "/postgres",
		RawQuery: "sslmode=disable"}
	return u.String()
}

// Login connects as username with password over TCP, runs a query, and
// disconnects. A nil error means the server checked the password and let the
// user in.
func (s *Server) Login(ctx context.Context, username, password string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL(username, password))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var one int
	return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
}

// RoleExists reports whether a role of that name exists (pg_roles), asked as
// the superuser.
func (s *Server) RoleExists(ctx context.Context, name string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL(SuperUser, s.password))
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname = $1", name).Scan(&n)
	return n > 0, err
}

// stop ends postgres with a fast shutdown (SIGINT), then SIGKILL if it does
// not go within 10 s.
func (s *Server) stop() {
	if s.proc != nil {
		s.proc.Stop(syscall.SIGINT, 10*time.Second)
		s.proc = nil
	}
}

func (s *Server) logTail() string { return proctest.Tail(filepath.Join(s.dir, "postgres.log"), 20) }

// runAs returns the credential of the "postgres" user when running as root
// (PostgreSQL refuses root), or nil to run as the current user.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL needs the system user postgres (install the Debian package postgresql): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
