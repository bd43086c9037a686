package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The proxy serves HTTP/1.1 itself on top of net/http's request parser and
// response writer, so that it sees each request's head as the agent wrote
// it: net/http's server silently drops a Content-Length sent with
// Transfer-Encoding and the Host header of an absolute-form request, which
// the proxy refuses instead (request smuggling).

const (
	// maxHead caps a request's head (request line and headers).
	maxHead = 64 << 10
	// idleTimeout closes a connection with no new request.
	idleTimeout = 2 * time.Minute
	// headTimeout bounds the reading of one request head.
	headTimeout = 10 * time.Second
)

// Serve accepts agent connections on ln until ctx ends, following Valet's
// revocation feed and sending tool-call reports meanwhile.
func (p *Proxy) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.verifier.Run(ctx) }()
	go func() { defer wg.Done(); p.watch(ctx) }()
	conns := map[net.Conn]struct{}{}
	var mu sync.Mutex
	go func() {
		<-ctx.Done()
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	var err error
	for {
		var c net.Conn
		c, err = ln.Accept()
		if err != nil {
			break
		}
		mu.Lock()
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.serveConn(ctx, c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
		}()
	}
	cancel()
	wg.Wait()
	for _, t := range p.live() {
		p.end(t, "proxy stopped")
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (p *Proxy) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, maxHead+1)
	bw := bufio.NewWriterSize(c, 32<<10)
	for ctx.Err() == nil {
		_ = c.SetReadDeadline(time.Now().Add(idleTimeout))
		if _, err := br.Peek(1); err != nil {
			return // closed or idle
		}
		_ = c.SetReadDeadline(time.Now().Add(headTimeout))
		head, err := peekHead(br)
		if err != nil {
			p.writeRefusal(bw, nil, refusal(http.StatusRequestHeaderFieldsTooLarge, "head", "", "the request head is too large or malformed"))
			return
		}
		if rule, msg := framing(head); rule != "" {
			// Refused before parsing: net/http would mend some of these.
			p.audit(ctx, nil, nil, rule, msg)
			p.writeRefusal(bw, nil, refusal(http.StatusBadRequest, rule, "", msg))
			return // the framing of what follows is in doubt
		}
		req, err := http.ReadRequest(br)
		if err != nil {
			p.audit(ctx, nil, nil, "head", "unparsable request: "+err.Error())
			p.writeRefusal(bw, nil, refusal(http.StatusBadRequest, "head", "", "the request could not be parsed"))
			return
		}
		_ = c.SetReadDeadline(time.Time{}) // the body streams upstream: the upstream call's timeouts apply
		cont := func() {
			if strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
				_, _ = bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
				_ = bw.Flush()
			}
		}
		resp, done := p.handle(ctx, req, head, cont)
		resp.Request = req
		resp.Close = resp.Close || req.Close
		aw := &agentWriter{bw: bw}
		aw.body, _ = resp.Body.(*countingBody)
		_ = c.SetWriteDeadline(time.Now().Add(idleTimeout))
		werr := resp.Write(aw)
		if werr == nil {
			werr = bw.Flush()
		}
		resp.Body.Close()
		if done != nil {
			done(werr)
		}
		if werr != nil || resp.Close {
			return
		}
		// What the agent sent but nobody read: drain a little, else close.
		if n, _ := io.CopyN(io.Discard, req.Body, 256<<10); n == 256<<10 {
			return
		}
	}
}

// agentWriter writes an answer to the agent: the head is buffered, and
// each piece of an upstream body is flushed as it comes, so a streamed
// answer reaches the agent as it streams. It is no io.ReaderFrom, so the
// body is copied through Write.
type agentWriter struct {
	bw   *bufio.Writer
	body *countingBody
}

func (w *agentWriter) Write(p []byte) (int, error) {
	n, err := w.bw.Write(p)
	if err == nil && w.body != nil && w.body.started.Load() {
		err = w.bw.Flush()
	}
	return n, err
}

// peekHead returns the head of the next request (up to the empty line)
// without consuming it.
func peekHead(br *bufio.Reader) ([]byte, error) {
	for {
		b, _ := br.Peek(br.Buffered())
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			return b[:i+2], nil
		}
		if i := bytes.Index(b, []byte("\n\n")); i >= 0 {
			return b[:i+1], nil
		}
		if len(b) >= maxHead {
			return nil, errors.New("head too large")
		}
		if _, err := br.Peek(len(b) + 1); err != nil {
			return nil, err
		}
	}
}

// headFields are the headers of a raw head that decide how a request is
// framed and where it goes.
type headFields struct {
	hosts, contentLengths, transferEncodings []string
	target                                   string
}

func parseHead(head []byte) headFields {
	var f headFields
	lines := strings.Split(strings.ReplaceAll(string(head), "\r\n", "\n"), "\n")
	if parts := strings.Fields(lines[0]); len(parts) >= 2 {
		f.target = parts[1]
	}
	for _, ln := range lines[1:] {
		name, value, ok := strings.Cut(ln, ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch http.CanonicalHeaderKey(strings.TrimSpace(name)) {
		case "Host":
			f.hosts = append(f.hosts, value)
		case "Content-Length":
			f.contentLengths = append(f.contentLengths, value)
		case "Transfer-Encoding":
			f.transferEncodings = append(f.transferEncodings, value)
		}
	}
	return f
}

// framing reports the rule a request head breaks, if any: more than one
// Host, Transfer-Encoding together with Content-Length, more than one
// Content-Length, a Transfer-Encoding other than one chunked, and header
// names with spaces before the colon.
func framing(head []byte) (rule, msg string) {
	f := parseHead(head)
	for _, ln := range strings.Split(string(head), "\n")[1:] {
		if name, _, ok := strings.Cut(ln, ":"); ok && name != strings.TrimSpace(name) {
			return "header_whitespace", "a header name has whitespace before its colon"
		}
	}
	switch {
	case len(f.hosts) > 1:
		return "duplicate_host", "the request has more than one Host header"
	case len(f.transferEncodings) > 0 && len(f.contentLengths) > 0:
		return "te_and_cl", "the request has both Transfer-Encoding and Content-Length"
	case len(f.contentLengths) > 1:
		return "duplicate_content_length", "the request has more than one Content-Length"
	case len(f.transferEncodings) > 1 || (len(f.transferEncodings) == 1 && !strings.EqualFold(f.transferEncodings[0], "chunked")):
		return "transfer_encoding", "the only Transfer-Encoding accepted is one chunked"
	}
	return "", ""
}

// hostMismatch reports whether an absolute-form request's Host header
// names another host than its URL.
func hostMismatch(head []byte, r *http.Request) bool {
	f := parseHead(head)
	return r.URL.IsAbs() && len(f.hosts) == 1 && !strings.EqualFold(f.hosts[0], r.URL.Host)
}

// refusalBody is the JSON of every refusal: what was refused and by which
// rule, and the tool when one was matched.
type refusalBody struct {
	Error   string `json:"error"`
	Rule    string `json:"rule"`
	Tool    string `json:"tool,omitempty"`
	Message string `json:"message"`
}

func refusal(status int, rule, tool, msg string) *http.Response {
	b, _ := json.Marshal(refusalBody{Error: strings.ToLower(strings.ReplaceAll(http.StatusText(status), " ", "_")), Rule: rule, Tool: tool, Message: msg})
	resp := rawJSON(status, append(b, '\n'))
	resp.Header.Set("Valet-Proxy-Refusal", rule)
	return resp
}

func jsonResponse(status int, v any) *http.Response {
	b, _ := json.Marshal(v)
	return rawJSON(status, append(b, '\n'))
}

func rawJSON(status int, b []byte) *http.Response {
	return &http.Response{StatusCode: status, ProtoMajor: 1, ProtoMinor: 1, Proto: "HTTP/1.1",
		Header:        http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"no-store"}},
		Body:          io.NopCloser(bytes.NewReader(b)),
		ContentLength: int64(len(b))}
}

func (p *Proxy) writeRefusal(bw *bufio.Writer, req *http.Request, resp *http.Response) {
	resp.Request, resp.Close = req, true
	_ = resp.Write(bw)
	_ = bw.Flush()
}
