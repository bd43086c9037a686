package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"
)

// FuzzHead feeds request heads to what the proxy runs on them before it
// trusts anything: peekHead, framing and net/http's parser, then the host
// check. A head framing accepts must not smuggle a second Host or a
// Content-Length past Transfer-Encoding.
func FuzzHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\nHost: b\n\n",
		"GET / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), maxHead+1)
		head, err := peekHead(br)
		if err != nil {
			return
		}
		if rule, _ := framing(head); rule != "" {
			return
		}
		r, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		f := parseHead(head)
		if len(f.hosts) > 1 {
			t.Fatalf("two Host headers passed framing: %q", head)
		}
		if len(r.TransferEncoding) > 0 && len(f.contentLengths) > 0 {
			t.Fatalf("Transfer-Encoding with Content-Length passed framing: %q", head)
		}
		_ = hostMismatch(head, r)
	})
}
