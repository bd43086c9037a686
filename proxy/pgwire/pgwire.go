// Package pgwire is the PostgreSQL listener of secretless mode: an agent
// connects with its proxy-local task handle as the password, the listener
// logs in to the real server with the task's own database role
// (scram-sha-256, through pgconn) and relays the session, and it cuts the
// session the moment the task ends. The agent never sees the role's
// password; the wire protocol is parsed by pgproto3, not by hand.
package pgwire

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Target is the real server and the login the task holds there.
type Target struct {
	// Addr is the server's host:port.
	Addr string
	// User and Password are the task's own role (a Vault dynamic secret).
	User, Password string
	// Database is the database to open; default the one the agent asked for.
	Database string
	// TLS, when set, is used to the server (sslmode=require and the
	// config's verification); nil means a plain connection.
	TLS *tls.Config
}

// Session is what a handle resolves to.
type Session struct {
	Target Target
	// TaskID names the task, for events and logs.
	TaskID string
	// Done closes when the task ends (completed, expired, revoked or its
	// agent frozen); the listener then closes the session at once.
	Done <-chan struct{}
	// SQLText keeps the text of the session's first statements (bounded
	// and escaped) in Event.Statements; without it no SQL text is kept.
	SQLText bool
	// Opened, when set, is called once the session is relayed; Closed
	// once it ended (both with the session's Event so far). They must not
	// block for long.
	Opened, Closed func(Event)
}

// Resolver turns what the agent sent at start-up into a Session. An error
// refuses the connection; its message is shown to the agent, so it must not
// hold a secret.
type Resolver interface {
	Resolve(ctx context.Context, user, database, handle string) (Session, error)
}

// Event describes one session, for the task's timeline: at its opening
// (Started, TaskID, User, Database) and at its end (the rest).
type Event struct {
	TaskID   string
	User     string // the role used at the server
	Database string
	Started  time.Time
	Duration time.Duration
	BytesIn  int64 // agent → server
	BytesOut int64 // server → agent
	// Queries counts the agent's Query and Parse messages (simple and
	// extended protocol statements).
	Queries int
	// Statements are the first MaxStatements statements' text, each cut
	// to MaxStatementBytes and quoted (Go syntax, ASCII only), when the
	// session's SQLText is set; nil otherwise.
	Statements []string
	EndReason  string
}

// Reasons a session ends, in Event.EndReason.
const (
	EndClient  = "client_closed"
	EndServer  = "server_closed"
	EndTask    = "task_ended"
	EndStopped = "proxy_stopped"
	// EndError is a session cut because the agent's stream broke the
	// protocol's framing.
	EndError = "error"
)

// Bounds of Event.Statements.
const (
	MaxStatements     = 8
	MaxStatementBytes = 96
)

// Server accepts agents' connections. Its zero value is not usable: set
// Resolver.
type Server struct {
	Resolver Resolver
	// Logger receives one line per refused or ended session (ids only).
	Logger *slog.Logger
	// OnEnd, if set, is called once per session that reached the server.
	OnEnd func(Event)
	// HandshakeTimeout bounds the time from accept to a ready session;
	// default 10 s.
	HandshakeTimeout time.Duration
	// MaxConns bounds concurrent connections; default 256. Extra ones are
	// refused with SQLSTATE 53300.
	MaxConns int

	once     sync.Once
	sem      chan struct{}
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	cancels  map[cancelKey]cancelTarget
	stopping atomic.Bool
	wg       sync.WaitGroup
	ln       net.Listener
}

type cancelKey struct {
	pid    uint32
	secret [4]byte
}

type cancelTarget struct {
	addr   string
	pid    uint32
	secret []byte
	tls    *tls.Config
}

func (s *Server) init() {
	s.once.Do(func() {
		if s.HandshakeTimeout <= 0 {
			s.HandshakeTimeout = 10 * time.Second
		}
		if s.MaxConns <= 0 {
			s.MaxConns = 256
		}
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		s.sem = make(chan struct{}, s.MaxConns)
		s.conns = make(map[net.Conn]struct{})
		s.cancels = make(map[cancelKey]cancelTarget)
	})
}

// Serve accepts connections on ln until Close.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.stopping.Load() {
				return nil
			}
			return err
		}
		select {
		case s.sem <- struct{}{}:
		default:
			s.refuse(c, "53300", "too many connections to the Valet proxy")
			continue
		}
		s.track(c, true)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-s.sem }()
			defer s.track(c, false)
			s.serveConn(c)
		}()
	}
}

// Close stops accepting, closes every session and waits for them.
func (s *Server) Close() error {
	s.init()
	s.stopping.Store(true)
	s.mu.Lock()
	if s.ln != nil {
		_ = s.ln.Close()
	}
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) track(c net.Conn, add bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
		_ = c.Close()
	}
}

// refuse answers a start-up with a FATAL error and closes.
func (s *Server) refuse(c net.Conn, code, msg string) {
	_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	be := pgproto3.NewBackend(c, c)
	be.Send(&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg})
	_ = be.Flush()
	_ = c.Close()
}

func (s *Server) serveConn(c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(s.HandshakeTimeout))
	be := pgproto3.NewBackend(c, c)
	be.SetMaxBodyLen(64 << 10)
	start, err := s.startup(c, be)
	if err != nil || start == nil {
		return
	}
	user, database := start.Parameters["user"], start.Parameters["database"]
	if database == "" {
		database = user
	}
	if err := be.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		return
	}
	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if err := be.Flush(); err != nil {
		return
	}
	msg, err := be.Receive()
	if err != nil {
		return
	}
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if !ok || pw.Password == "" {
		s.refuse(c, "28P01", "the password must be a Valet task handle")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.HandshakeTimeout)
	defer cancel()
	sess, err := s.Resolver.Resolve(ctx, user, database, pw.Password)
	if err != nil {
		s.Logger.Info("pgwire: refused", "user", strconv.Quote(truncate(user)), "reason", err.Error())
		s.refuse(c, "28P01", err.Error())
		return
	}
	if sess.Target.Database == "" {
		sess.Target.Database = database
	}
	up, err := s.dial(ctx, sess.Target, start.Parameters)
	if err != nil {
		s.Logger.Warn("pgwire: upstream login failed", "task", sess.TaskID, "err", err)
		s.refuse(c, "08006", "the Valet proxy could not log in to the database for this task")
		return
	}
	select {
	case <-sess.Done:
		_ = up.Conn.Close()
		s.refuse(c, "28000", "the task has ended")
		return
	default:
	}
	key := s.register(sess.Target, up)
	defer s.unregister(key)
	if start.ProtocolVersion != pgproto3.ProtocolVersion30 {
		be.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0})
	}
	be.Send(&pgproto3.AuthenticationOk{})
	for k, v := range up.ParameterStatuses {
		be.Send(&pgproto3.ParameterStatus{Name: k, Value: v})
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: key.pid, SecretKey: key.secret[:]})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: up.TxStatus})
	if err := be.Flush(); err != nil {
		_ = up.Conn.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	s.relay(c, up.Conn, sess)
}

// startup reads the start-up packet, declining TLS and GSS encryption (the
// listener is for the agent's own host) and forwarding cancel requests.
// It returns nil when the connection is done.
func (s *Server) startup(c net.Conn, be *pgproto3.Backend) (*pgproto3.StartupMessage, error) {
	for range 3 {
		msg, err := be.ReceiveStartupMessage()
		if err != nil {
			return nil, err
		}
		switch m := msg.(type) {
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return nil, err
			}
		case *pgproto3.CancelRequest:
			s.forwardCancel(m)
			return nil, nil
		case *pgproto3.StartupMessage:
			// Copy: the message is only valid until the next receive.
			params := make(map[string]string, len(m.Parameters))
			for k, v := range m.Parameters {
				params[k] = v
			}
			return &pgproto3.StartupMessage{ProtocolVersion: m.ProtocolVersion, Parameters: params}, nil
		default:
			return nil, fmt.Errorf("unexpected start-up message %T", msg)
		}
	}
	return nil, errors.New("too many start-up messages")
}

// dial logs in to the server as the task's role, passing on the agent's
// harmless start-up parameters (application_name and settings).
func (s *Server) dial(ctx context.Context, t Target, params map[string]string) (*pgconn.HijackedConn, error) {
	host, port, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return nil, fmt.Errorf("target address %q: %w", t.Addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("target port %q: %w", port, err)
	}
	cfg, err := pgconn.ParseConfig("sslmode=disable")
	if err != nil {
		return nil, err
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = host, uint16(p), t.User, t.Password, t.Database
	cfg.TLSConfig = t.TLS
	cfg.Fallbacks = nil
	for k, v := range params {
		switch k {
		case "user", "database", "replication":
		default:
			cfg.RuntimeParams[k] = v
		}
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pc.SyncConn(ctx); err != nil {
		_ = pc.Close(ctx)
		return nil, err
	}
	return pc.Hijack()
}

// register gives the agent a cancel key of the proxy's own, mapped to the
// server's, so a cancel request never carries the server's key to the
// agent.
func (s *Server) register(t Target, up *pgconn.HijackedConn) cancelKey {
	var k cancelKey
	var b [4]byte
	_, _ = rand.Read(b[:])
	k.pid = binary.BigEndian.Uint32(b[:]) & 0x7fffffff
	_, _ = rand.Read(k.secret[:])
	s.mu.Lock()
	s.cancels[k] = cancelTarget{addr: t.Addr, pid: up.PID, secret: up.SecretKey, tls: t.TLS}
	s.mu.Unlock()
	return k
}

func (s *Server) unregister(k cancelKey) {
	s.mu.Lock()
	delete(s.cancels, k)
	s.mu.Unlock()
}

func (s *Server) forwardCancel(m *pgproto3.CancelRequest) {
	if len(m.SecretKey) != 4 {
		return
	}
	var k cancelKey
	k.pid = m.ProcessID
	copy(k.secret[:], m.SecretKey)
	s.mu.Lock()
	t, ok := s.cancels[k]
	s.mu.Unlock()
	if !ok {
		return
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", t.addr)
	if err != nil {
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.CancelRequest{ProcessID: t.pid, SecretKey: t.secret})
	_ = fe.Flush()
}

// relay copies the session both ways until either side closes, the task
// ends or the proxy stops. The agent's messages are framed (type byte and
// length) to count its statements; their bytes go to the server as sent.
func (s *Server) relay(agent, server net.Conn, sess Session) {
	ev := Event{TaskID: sess.TaskID, User: sess.Target.User, Database: sess.Target.Database, Started: time.Now()}
	if sess.Opened != nil {
		sess.Opened(ev)
	}
	var out atomic.Int64
	st := &agentStream{sqlText: sess.SQLText}
	done := make(chan string, 2)
	go func() { done <- st.copy(server, agent) }()
	go func() {
		n, _ := io.Copy(agent, server)
		out.Add(n)
		done <- EndServer
	}()
	var reason string
	received := 0
	select {
	case reason = <-done:
		received = 1
	case <-sess.Done:
		reason = EndTask
	}
	if reason == EndServer && st.terminated.Load() {
		reason = EndClient // the server closed because the agent said Terminate
	}
	if s.stopping.Load() {
		reason = EndStopped
	}
	_ = agent.Close()
	_ = server.Close()
	for ; received < 2; received++ {
		<-done
	}
	ev.Duration, ev.BytesIn, ev.BytesOut, ev.EndReason = time.Since(ev.Started), st.n.Load(), out.Load(), reason
	ev.Queries, ev.Statements = int(st.queries.Load()), st.statements()
	s.Logger.Info("pgwire: session ended", "task", sess.TaskID, "reason", reason, "bytes_in", ev.BytesIn, "bytes_out", ev.BytesOut, "queries", ev.Queries)
	if sess.Closed != nil {
		sess.Closed(ev)
	}
	if s.OnEnd != nil {
		s.OnEnd(ev)
	}
}

// agentStream relays the agent's messages to the server, counting bytes
// and statements.
type agentStream struct {
	sqlText bool
	n       atomic.Int64
	queries atomic.Int64
	// terminated is set once the agent's Terminate is read, before it is
	// relayed: the server then closes, and the session still ended at
	// the agent's word.
	terminated atomic.Bool
	mu         sync.Mutex
	stmts      []string
}

// maxDecoded is the largest message relayed whole (and, for a Query or
// Parse, decoded for its text); a longer one is streamed through, its
// text noted by its size only.
const maxDecoded = 64 << 10

// copy relays until the agent's side ends and says why: EndClient when
// the agent closed (or Terminate), EndServer when the server cannot be
// written, EndError when a message's length is impossible.
func (a *agentStream) copy(server io.Writer, agent io.Reader) string {
	br := bufio.NewReaderSize(agent, 32<<10)
	bw := bufio.NewWriterSize(server, 32<<10)
	scratch := make([]byte, maxDecoded)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return EndClient
		}
		n := binary.BigEndian.Uint32(hdr[1:])
		if n < 4 || n > 1<<30 { // PostgreSQL's own limit is 1 GiB
			return EndError
		}
		body := int64(n) - 4
		a.n.Add(5 + body)
		if _, err := bw.Write(hdr[:]); err != nil {
			return EndServer
		}
		typ := hdr[0]
		if typ == 'X' {
			a.terminated.Store(true)
		}
		isStatement := typ == 'Q' || typ == 'P'
		if isStatement {
			a.queries.Add(1)
		}
		if body <= maxDecoded {
			// Whole, through a scratch buffer: most messages are small.
			b := scratch[:body]
			if _, err := io.ReadFull(br, b); err != nil {
				return EndClient
			}
			if isStatement && a.sqlText && a.wantMore() {
				a.note(statementText(typ, b))
			}
			if _, err := bw.Write(b); err != nil {
				return EndServer
			}
		} else {
			if isStatement && a.sqlText && a.wantMore() {
				a.note(fmt.Sprintf("[a statement of %d bytes]", body))
			}
			if m, err := io.CopyN(bw, br, body); err != nil {
				if m < body && errors.Is(err, io.EOF) {
					return EndClient
				}
				return EndServer
			}
		}
		if br.Buffered() == 0 {
			if err := bw.Flush(); err != nil {
				return EndServer
			}
		}
		if typ == 'X' { // Terminate
			_ = bw.Flush()
			return EndClient
		}
	}
}

func (a *agentStream) wantMore() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.stmts) < MaxStatements
}

func (a *agentStream) note(s string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.stmts) < MaxStatements {
		a.stmts = append(a.stmts, s)
	}
}

func (a *agentStream) statements() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.stmts)
}

// statementText is a Query or Parse message's SQL, cut and quoted, as
// pgproto3 decodes it.
func statementText(typ byte, body []byte) string {
	var sql string
	switch typ {
	case 'Q':
		var m pgproto3.Query
		if m.Decode(body) != nil {
			return "[an undecodable query]"
		}
		sql = m.String
	case 'P':
		var m pgproto3.Parse
		if m.Decode(body) != nil {
			return "[an undecodable parse]"
		}
		sql = m.Query
	}
	if len(sql) > MaxStatementBytes {
		cut := MaxStatementBytes
		for cut > 0 && !utf8.RuneStart(sql[cut]) {
			cut--
		}
		return strconv.QuoteToASCII(sql[:cut]) + fmt.Sprintf("…[+%d bytes]", len(sql)-cut)
	}
	return strconv.QuoteToASCII(sql)
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64]
	}
	return s
}
