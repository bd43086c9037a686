package proxy

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/verify"
)

// handle answers one request. done, when not nil, is called once the
// answer has been written (or failed to be), to report the call.
func (p *Proxy) handle(ctx context.Context, r *http.Request, head []byte, cont func()) (*http.Response, func(error)) {
	if r.Method == http.MethodConnect {
		p.audit(ctx, r, nil, "connect", "CONNECT refused")
		return refusal(http.StatusMethodNotAllowed, "connect",
			"", "CONNECT is not supported: the proxy would have to intercept TLS to see and check the request. Send plain http:// URLs through HTTP_PROXY (the proxy makes the TLS call) or use the reverse proxy at /u/<upstream>/"), nil
	}
	if hostMismatch(head, r) {
		const msg = "the Host header names another host than the request URL"
		p.audit(ctx, r, nil, "host_mismatch", msg)
		resp := refusal(http.StatusBadRequest, "host_mismatch", "", msg)
		resp.Close = true // the framing of what follows is in doubt
		return resp, nil
	}
	if r.URL.IsAbs() {
		return p.forward(ctx, r, cont)
	}
	path := r.URL.EscapedPath()
	switch {
	case path == "/healthz" && r.Method == http.MethodGet:
		return jsonResponse(http.StatusOK, map[string]any{"status": "ok", "feed_live": p.verifier.Live()}), nil
	case path == "/v1/tasks" && r.Method == http.MethodPost:
		cont()
		return p.declare(ctx, r), nil
	case strings.HasPrefix(path, "/v1/tasks/") && strings.HasSuffix(path, "/complete") && r.Method == http.MethodPost:
		id := strings.TrimSuffix(strings.TrimPrefix(path, "/v1/tasks/"), "/complete")
		if id == "" || strings.Contains(id, "/") {
			break
		}
		return p.complete(ctx, id, r), nil
	case strings.HasPrefix(path, "/u/"):
		return p.reverse(ctx, r, cont)
	}
	return refusal(http.StatusNotFound, "route", "", "no such route: the proxy serves POST /v1/tasks, POST /v1/tasks/{id}/complete, /u/<upstream>/... and absolute-form http:// requests"), nil
}

// call is one request being forwarded.
type call struct {
	task     *Task
	tmpl     *policy.Template
	up       *policy.Upstream
	tool     string
	path     string // escaped, the full upstream path
	query    string
	handleID string
}

// reverse serves /u/<upstream>/<path> with the handle in Authorization.
func (p *Proxy) reverse(ctx context.Context, r *http.Request, cont func()) (*http.Response, func(error)) {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), "/u/")
	name, sub, _ := strings.Cut(rest, "/")
	handle, ok := bearer(r.Header.Get("Authorization"))
	if !ok {
		p.audit(ctx, r, nil, "handle", "no handle")
		return refusal(http.StatusUnauthorized, "handle", "", "send the task's handle as Authorization: Bearer <handle>"), nil
	}
	t, resp := p.resolve(ctx, r, handle)
	if resp != nil {
		return resp, nil
	}
	tmpl, _ := p.cfg.Templates.Get(t.Template)
	up, ok := tmpl.Upstream(name)
	if !ok {
		p.audit(ctx, r, t, "upstream", "no such upstream")
		return refusal(http.StatusForbidden, "upstream", "", fmt.Sprintf("template %q has no upstream %q", t.Template, broker.Bound(name, 64))), nil
	}
	path := strings.TrimSuffix(up.URL.EscapedPath(), "/") + "/" + sub
	return p.forwardTo(ctx, r, cont, &call{task: t, tmpl: tmpl, up: up, path: path, query: r.URL.RawQuery}, false)
}

// forward serves an absolute-form request (HTTP_PROXY) with the handle in
// Proxy-Authorization (Bearer, or Basic with the handle as password).
func (p *Proxy) forward(ctx context.Context, r *http.Request, cont func()) (*http.Response, func(error)) {
	if r.URL.Scheme != "http" {
		p.audit(ctx, r, nil, "scheme", "absolute-form request for "+r.URL.Scheme)
		return refusal(http.StatusBadRequest, "scheme", "", "send plain http:// URLs: the proxy makes the TLS call to an https upstream"), nil
	}
	handle, ok := proxyHandle(r.Header.Get("Proxy-Authorization"))
	if !ok {
		p.audit(ctx, r, nil, "handle", "no handle")
		resp := refusal(http.StatusProxyAuthRequired, "handle", "", "send the task's handle as Proxy-Authorization: Bearer <handle> (or as the password of the proxy URL)")
		resp.Header.Set("Proxy-Authenticate", `Basic realm="valet-proxy"`)
		return resp, nil
	}
	t, resp := p.resolve(ctx, r, handle)
	if resp != nil {
		return resp, nil
	}
	tmpl, _ := p.cfg.Templates.Get(t.Template)
	host := strings.ToLower(r.URL.Hostname())
	if ip := net.ParseIP(host); ip != nil || strings.HasPrefix(r.URL.Host, "[") {
		// An IP literal matches only an upstream configured with it.
		if _, ok := tmpl.UpstreamFor(host, r.URL.Port()); !ok {
			p.audit(ctx, r, t, "ip_literal", "IP literal not among the upstreams")
			return refusal(http.StatusForbidden, "ip_literal", "", "the request names an IP address that is not one of the template's upstreams"), nil
		}
	}
	up, ok := tmpl.UpstreamFor(host, r.URL.Port())
	if !ok {
		p.audit(ctx, r, t, "upstream", "host not among the upstreams")
		return refusal(http.StatusForbidden, "upstream", "", fmt.Sprintf("host %q is not an upstream of template %q", broker.Bound(host, 128), t.Template)), nil
	}
	return p.forwardTo(ctx, r, cont, &call{task: t, tmpl: tmpl, up: up, path: r.URL.EscapedPath(), query: r.URL.RawQuery}, true)
}

// resolve finds the live task of a handle, or the refusal.
func (p *Proxy) resolve(ctx context.Context, r *http.Request, handle string) (*Task, *http.Response) {
	t, ended := p.lookup(handle)
	switch {
	case ended != nil:
		p.auditTask(ctx, r, ended.id, "task_ended", "task ended: "+ended.reason)
		return nil, refusal(http.StatusForbidden, "task_ended", "", fmt.Sprintf("task %s has ended (%s)", ended.id, ended.reason))
	case t == nil:
		p.audit(ctx, r, nil, "handle", "unknown handle")
		return nil, refusal(http.StatusUnauthorized, "handle", "", "unknown handle")
	}
	if resp := p.checkBinding(ctx, r, t, handle); resp != nil {
		return nil, resp
	}
	return t, nil
}

// forwardTo checks a resolved call and forwards it.
func (p *Proxy) forwardTo(ctx context.Context, r *http.Request, cont func(), c *call, forwardMode bool) (*http.Response, func(error)) {
	if !cleanPath(c.path) {
		p.audit(ctx, r, c.task, "path", "path not clean")
		return refusal(http.StatusBadRequest, "path", "", "the path must be clean: no '.', '..' or empty segments, no encoded '/', '\\' or '.'"), nil
	}
	route := c.up.Match(r.Method, c.path)
	if route == nil {
		p.audit(ctx, r, c.task, "route", "no route")
		return refusal(http.StatusForbidden, "route", "", fmt.Sprintf("no route of upstream %q allows %s %s", c.up.Name, broker.Bound(r.Method, 16), broker.Bound(c.path, 256))), nil
	}
	c.tool = route.Tool
	if !c.task.Granted(c.tool) {
		p.audit(ctx, r, c.task, "tool", "tool not granted: "+c.tool)
		return refusal(http.StatusForbidden, "tool", c.tool, fmt.Sprintf("tool %q is not granted to task %s (route %s %s of upstream %q)", c.tool, c.task.ID, r.Method, route.Path, c.up.Name)), nil
	}
	if !p.cfg.Now().Before(c.task.Deadline) {
		p.end(c.task, "expired")
		p.audit(ctx, r, c.task, "task_ended", "task expired")
		return refusal(http.StatusForbidden, "task_ended", c.tool, fmt.Sprintf("task %s has ended (expired)", c.task.ID)), nil
	}
	claims, err := p.check(c.task.ctx, c.task, c.tool)
	if err != nil {
		var ve *verify.Error
		if errors.As(err, &ve) && ve.Status == http.StatusServiceUnavailable {
			return refusal(http.StatusServiceUnavailable, "valet", c.tool, "Valet cannot be reached to check the task"), nil
		}
		p.end(c.task, "revoked")
		p.audit(ctx, r, c.task, "task_ended", "task not live")
		return refusal(http.StatusForbidden, "task_ended", c.tool, fmt.Sprintf("task %s has ended (revoked)", c.task.ID)), nil
	}
	out, err := p.outgoing(r, c, forwardMode)
	var oe *oauthError
	switch {
	case errors.As(err, &oe):
		p.cfg.Logger.Error("proxy: no OAuth token for an upstream", "task_id", c.task.ID, "upstream", c.up.Name, "provider", oe.provider, "err", oe.err)
		return refusal(http.StatusServiceUnavailable, "oauth", c.tool, fmt.Sprintf("OAuth provider %q cannot issue a token for upstream %q now", oe.provider, c.up.Name)), nil
	case err != nil:
		return refusal(http.StatusForbidden, "credential", c.tool, err.Error()), nil
	}
	cont()
	start := time.Now()
	tr := p.transports[c.tmpl.Name+"\x00"+c.up.Name]
	resp, err := tr.RoundTrip(out)
	if err != nil {
		if c.task.ctx.Err() != nil {
			p.audit(ctx, r, c.task, "task_ended", "task ended during the call")
			return refusal(http.StatusForbidden, "task_ended", c.tool, fmt.Sprintf("task %s ended during the call", c.task.ID)), nil
		}
		var pe *privateAddrError
		if errors.As(err, &pe) {
			p.audit(ctx, r, c.task, "private_address", pe.Error())
			return refusal(http.StatusForbidden, "private_address", c.tool, fmt.Sprintf("upstream %q resolves to a non-public address and does not allow_private", c.up.Name)), nil
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its URL may hold a query-placed credential
		}
		p.cfg.Logger.Warn("proxy: upstream call failed", "task_id", c.task.ID, "upstream", c.up.Name, "err", err)
		return refusal(http.StatusBadGateway, "upstream", c.tool, fmt.Sprintf("upstream %q could not be reached", c.up.Name)), nil
	}
	removeHopHeaders(resp.Header)
	if !slices.Contains(c.up.PassHeaders, "Cookie") {
		resp.Header.Del("Set-Cookie") // an upstream session is a credential too
	}
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	resp.TransferEncoding = nil
	if resp.ContentLength < 0 {
		resp.TransferEncoding = []string{"chunked"} // the agent's connection stays open
	}
	counted := &countingBody{ReadCloser: resp.Body}
	resp.Body = counted
	done := func(werr error) {
		status := resp.StatusCode
		if werr != nil {
			status = 499 // the answer did not reach the agent in full
		}
		summary := fmt.Sprintf("proxied %s %s%s -> %d, %d bytes, %d ms", r.Method, c.up.URL.Host, broker.Bound(c.path, 512), status,
			counted.n.Load(), time.Since(start).Milliseconds())
		if tr, err := p.tokenRequest(ctx, c.task); err == nil {
			p.verifier.Report(tr, claims, c.tool, status, verify.Effect{SideEffect: summary})
		}
	}
	return resp, done
}

// outgoing builds the upstream request: the agent's method, path, query,
// headers and body, less hop-by-hop and credential headers, plus the
// task's credential.
func (p *Proxy) outgoing(r *http.Request, c *call, forwardMode bool) (*http.Request, error) {
	u := *c.up.URL
	u.Path, u.RawPath = "", ""
	target, err := url.Parse(u.String() + c.path)
	if err != nil {
		return nil, errors.New("the path could not be joined to the upstream URL")
	}
	cred := c.up.Credential
	q := c.query
	if cred.As == policy.AsQuery {
		vals, err := url.ParseQuery(q)
		if err != nil {
			return nil, errors.New("the query string could not be parsed")
		}
		vals.Del(cred.Name) // the agent does not choose the credential
		secret, err := p.secretOf(c.task, cred)
		if err != nil {
			return nil, err
		}
		vals.Set(cred.Name, secret)
		q = vals.Encode()
	}
	target.RawQuery = q
	out, err := http.NewRequestWithContext(c.task.ctx, r.Method, target.String(), http.MaxBytesReader(nil, r.Body, p.cfg.MaxBody))
	if err != nil {
		return nil, errors.New("the upstream request could not be built")
	}
	out.ContentLength = r.ContentLength
	if r.ContentLength == 0 {
		out.Body = http.NoBody
	}
	out.Header = r.Header.Clone()
	removeHopHeaders(out.Header)
	out.Header.Del("Proxy-Authorization")
	out.Header.Del("Expect")
	out.Header.Del("DPoP") // the agent's proof is for the proxy, bound to the handle
	pass := func(h string) bool {
		for _, x := range c.up.PassHeaders {
			if x == h {
				return true
			}
		}
		return false
	}
	if !forwardMode || !pass("Authorization") {
		out.Header.Del("Authorization") // in reverse mode it holds the handle
	}
	if !pass("Cookie") {
		out.Header.Del("Cookie")
	}
	switch cred.As {
	case policy.AsHeader:
		secret, err := p.secretOf(c.task, cred)
		if err != nil {
			return nil, err
		}
		if cred.Scheme != "" {
			secret = cred.Scheme + " " + secret
		}
		out.Header.Set(cred.Name, secret)
	case policy.AsBasic:
		secret, err := p.secretOf(c.task, cred)
		if err != nil {
			return nil, err
		}
		user := cred.Username
		if user == "" && cred.From == policy.FromDatabasePassword {
			user = c.task.secrets().dbUser
		}
		out.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+secret)))
	}
	return out, nil
}

// secretOf is the credential an upstream attaches: one of the task's, or
// an OAuth provider's token (an *oauthError when it cannot be had), only
// while the task holds its credentials.
func (p *Proxy) secretOf(t *Task, c policy.UpstreamCredential) (string, error) {
	s := t.secrets()
	if c.Provider != "" {
		if s.taskToken == "" {
			return "", fmt.Errorf("task %s has ended", t.ID)
		}
		return p.oauth.token(t.ctx, c.Provider, c.Scopes)
	}
	var v string
	switch c.From {
	case policy.FromTaskToken:
		v = s.taskToken
	case policy.FromVaultToken:
		v = s.vaultToken
	case policy.FromDatabasePassword:
		v = s.dbSecret
	}
	if v == "" {
		return "", fmt.Errorf("task %s holds no %s credential for this upstream (or has ended)", t.ID, c.From)
	}
	return v, nil
}

// cleanPath refuses escaped paths that could mean something else to the
// upstream than to the route check.
func cleanPath(p string) bool {
	if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") || strings.Contains(p, "\\") {
		return false
	}
	lower := strings.ToLower(p)
	for _, bad := range []string{"%2f", "%5c", "%2e", "%00"} {
		if strings.Contains(lower, bad) {
			return false
		}
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	for i := 0; i < len(p); i++ {
		if p[i] < 0x21 || p[i] == 0x7f {
			return false
		}
	}
	return true
}

// proxyHandle reads the handle of Proxy-Authorization: Bearer <handle>,
// or Basic with the handle as the password (a proxy URL's userinfo).
func proxyHandle(h string) (string, bool) {
	if tok, ok := bearer(h); ok {
		return tok, true
	}
	scheme, cred, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return "", false
	}
	_, pass, ok := strings.Cut(string(raw), ":")
	return pass, ok && pass != ""
}

// hopHeaders are per-connection headers (RFC 9110 section 7.6.1).
var hopHeaders = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHopHeaders(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopHeaders {
		h.Del(name)
	}
}

// countingBody counts an upstream answer's bytes; started tells the
// agent's writer that the head is written and the body streams.
type countingBody struct {
	io.ReadCloser
	n       atomic.Int64
	started atomic.Bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	b.started.Store(true)
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// privateAddrError is a dial the upstream's policy refuses.
type privateAddrError struct{ addr string }

func (e *privateAddrError) Error() string {
	return "dialling " + e.addr + ": a non-public address, and the upstream does not allow_private"
}

// newTransport is one upstream's transport. Its dialer checks the address
// actually dialled, after DNS, so a name that resolves to loopback or a
// private range is refused unless the upstream allows it.
func newTransport(allowPrivate bool, tlsConfig *tls.Config) *http.Transport {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second,
		ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
			host, _, err := net.SplitHostPort(address)
			if err != nil {
				return err
			}
			ip := net.ParseIP(host)
			if ip == nil {
				return &privateAddrError{addr: address}
			}
			if !allowPrivate && isPrivate(ip) {
				return &privateAddrError{addr: address}
			}
			return nil
		}}
	var tc *tls.Config
	if tlsConfig != nil {
		tc = tlsConfig.Clone()
	}
	return &http.Transport{Proxy: nil, DialContext: d.DialContext, TLSClientConfig: tc, ForceAttemptHTTP2: true,
		TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: time.Minute, MaxIdleConns: 256, MaxIdleConnsPerHost: 64,
		IdleConnTimeout: 90 * time.Second}
}

// isPrivate reports whether ip is an address an upstream reaches only
// with allow_private: loopback, private (RFC 1918, RFC 4193), link-local,
// unspecified, multicast, 0.0.0.0/8 and shared address space (RFC 6598),
// IPv4-mapped forms included.
func isPrivate(ip net.IP) bool {
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsInterfaceLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified() || cgnat.Contains(ip) ||
		(len(ip) == net.IPv4len && ip[0] == 0)
}

var cgnat = &net.IPNet{IP: net.IPv4(100, 64, 0, 0).To4(), Mask: net.CIDRMask(10, 32)}

// audit records a refused request: who, what and by which rule; never a
// header value or body.
func (p *Proxy) audit(ctx context.Context, r *http.Request, t *Task, rule, reason string) {
	id := ""
	if t != nil {
		id = t.ID
	}
	p.auditTask(ctx, r, id, rule, reason)
}

func (p *Proxy) auditTask(ctx context.Context, r *http.Request, taskID, rule, reason string) {
	e := broker.Event{Time: p.cfg.Now(), Type: "proxy.refused", TaskID: taskID, Outcome: "denied", Rule: rule,
		Reason: broker.Bound(reason, 256), Actor: "proxy"}
	if r != nil {
		e.Detail = map[string]any{"method": broker.Bound(r.Method, 16), "host": broker.Bound(r.Host, 128),
			"path": broker.Bound(r.URL.EscapedPath(), broker.MaxLoggedPath)}
	}
	if err := p.cfg.Auditor.Record(context.WithoutCancel(ctx), e); err != nil {
		p.cfg.Logger.Error("proxy: auditing a refusal failed", "rule", rule, "err", err)
	}
	p.cfg.Logger.Warn("proxy: request refused", "task_id", taskID, "rule", rule, "reason", e.Reason)
}
