// Package redistest runs a private redis-server for one test, so tests that
// need real Redis never share state with each other or with a developer's
// instance.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/proctest"
	"github.com/valet-dev/valet/internal/testkit"
)

// startTimeout bounds how long Start and Restart wait for PING to answer.
const startTimeout = 5 * time.Second

// Option changes how the server is started.
type Option func(*config)

type config struct {
	aof   bool
	fsync string
	// args are extra command-line directives (cluster and replica set-up).
	args []string
	// sentinel, when set, is the body of a sentinel configuration: the
	// process runs as a Sentinel with it (port, bind, dir and log are
	// added), not as a data server.
	sentinel string
}

// withArgs adds command-line directives to the server's start.
func withArgs(args ...string) Option { return func(c *config) { c.args = append(c.args, args...) } }

// WithAOF turns on the append-only file with appendfsync always, so data
// written before Kill survives Restart.
func WithAOF() Option { return func(c *config) { c.aof = true } }

// WithAOFEverySec turns on the append-only file with appendfsync everysec,
// the durability the README asks of production.
func WithAOFEverySec() Option { return func(c *config) { c.aof, c.fsync = true, "everysec" } }

// Server is a redis-server process owned by one test. Its methods must be
// called from the test's own goroutine (they may call t.Fatal).
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int
	cfg  config

	proc     *proctest.Process // nil while stopped
	launched bool              // it answered PING once
}

// Start launches redis-server on a free loopback port with its data in a
// fresh temporary directory, waits until it answers PING, and stops it when
// the test ends. A missing redis-server fails the test: the Redis tests are
// part of the suite, not optional.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server not found on PATH: install the Debian package redis-server")
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	for _, o := range opts {
		o(&s.cfg)
	}
	t.Cleanup(s.stop)

	// Another process may take the port between choosing it and binding
	// it; try a few ports before giving up.
	var lastErr error
	for range 3 {
		if s.port, lastErr = testkit.FreePort(); lastErr != nil {
			continue
		}
		if lastErr = s.launch(); lastErr == nil {
			return s
		}
	}
	t.Fatalf("starting redis-server: %v", lastErr)
	return nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is a redis:// URL for database 0 of the server.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Kill ends the server with SIGKILL, as a crash would, and waits until the
// process has exited. Killing a stopped server does nothing.
func (s *Server) Kill() {
	s.t.Helper()
	if s.proc == nil {
		return
	}
	s.proc.Stop(syscall.SIGKILL, 0)
	s.proc = nil
}

// Restart starts the server again on the same port and data directory (after
// killing it if it still runs) and waits until it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.launch(); err != nil {
		s.t.Fatalf("restarting redis-server: %v", err)
	}
}

// launch starts the process and waits for PING. On failure the process is
// gone and the error carries the tail of its log.
func (s *Server) launch() error {
	if s.cfg.sentinel != "" {
		return s.launchSentinel()
	}
	args := []string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--dir", s.dir,
		"--logfile", "redis.log",
	}
	if s.cfg.aof {
		fsync := s.cfg.fsync
		if fsync == "" {
			fsync = "always"
		}
		args = append(args, "--appendonly", "yes", "--appendfsync", fsync)
	} else {
		args = append(args, "--appendonly", "no")
	}
	args = append(args, s.cfg.args...)
	return s.run(exec.Command(s.bin, args...))
}

// run starts cmd as the server's process and waits for PING.
func (s *Server) run(cmd *exec.Cmd) error {
	cmd.Dir = s.dir
	proc, err := proctest.Start(cmd, filepath.Join(s.dir, "stdout.log"))
	if err != nil {
		return err
	}
	s.proc = proc

	deadline := time.Now().Add(startTimeout)
	for {
		err := ping(s.Addr())
		if err == nil {
			s.launched = true
			return nil
		}
		if proc.Exited() {
			s.proc = nil
			return fmt.Errorf("redis-server on port %d exited at start; log:\n%s", s.port, s.logTail())
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on port %d did not answer PING within %v (%v); log:\n%s",
				s.port, startTimeout, err, s.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the server at test cleanup.
func (s *Server) stop() {
	if s.proc != nil {
		s.proc.Stop(syscall.SIGKILL, 0)
		s.proc = nil
	}
}

// logTail returns the last lines of the server's log, for failure messages.
func (s *Server) logTail() string { return proctest.Tail(filepath.Join(s.dir, "redis.log"), 20) }

// ping sends an inline PING and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}
