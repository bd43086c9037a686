// Package proctest runs the real servers that tests talk to (redis-server,
// PostgreSQL, Vault) as child processes: it starts them with their output in
// a log file, knows when they exit, stops them, and quotes the end of their
// log when something goes wrong.
package proctest

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// Process is one running child server.
type Process struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// Start runs cmd with its stdout and stderr appended to logPath.
func Start(cmd *exec.Cmd, logPath string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	p := &Process{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	return p, nil
}

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends sig and waits for the process to exit, killing it if it is
// still there after grace. Stopping an exited process does nothing.
func (p *Process) Stop(sig syscall.Signal, grace time.Duration) {
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = p.cmd.Process.Kill()
	}
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// Tail returns the last n lines of the process's log, for failure messages.
func (p *Process) Tail(n int) string { return Tail(p.log, n) }

// Tail returns the last n lines of the file at path.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
