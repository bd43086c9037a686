package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/requestid"
)

// rawGet sends a GET with the given raw header lines over its own
// connection, so values no Go client would send (CR, LF, ESC, 1 MB) reach
// the server as an attacker sends them.
func (e *env) rawGet(path string, headers ...string) (*http.Response, []byte) {
	e.t.Helper()
	c, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second)) // a guard against a hung server, not a timing assertion
	req := "GET " + path + " HTTP/1.1\r\nHost: valet\r\nConnection: close\r\n" + strings.Join(headers, "\r\n") + "\r\n\r\n"
	go func() { _, _ = io.WriteString(c, req) }() // the server may answer before reading it all
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		e.t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// TestAttackRequestIDs is issue 9 #1 as a scripted attack: unauthenticated
// admin calls (audited as denied) with hostile X-Request-Id values. Before
// the fix each id went whole into the audit line, the log and the error
// body (one 12 MB line stopped every restart). Now: a header block over
// 64 KiB is refused by the server (431) and audits nothing; every other
// value is answered with a bounded id of Valet's own; the audit lines stay
// small; the trail verifies in the file and in Redis; and a restart
// (OpenFile of the trail, as `valet serve` does) still works.
func TestAttackRequestIDs(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	attacks := []struct {
		name, value string
	}{
		{"1 MB", strings.Repeat("r", 1<<20)},
		{"just under the header cap", strings.Repeat("q", 60<<10)},
		{"65 chars", strings.Repeat("a", 65)},
		{"CR", "abc\rdef"},
		{"LF splitting a header", "abc\nX-Injected: 1"},
		{"ANSI", "\x1b[2J\x1b[31mred"},
		{"BEL and NUL", "a\x07b\x00c"},
		{"unicode", "ид-запроса-✓"},
		{"JSON breaking", `","outcome":"granted`},
	}
	answered := 0 // the attacks that reached Valet (and its audit)
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			resp, body := e.rawGet("/v1/admin/tasks", "X-Request-Id: "+a.value, "Authorization: Bearer not-a-token")
			switch resp.StatusCode {
			case http.StatusRequestHeaderFieldsTooLarge, http.StatusBadRequest:
				// net/http refused the header block before Valet saw it.
				if len(a.value) < 60<<10 && resp.StatusCode == http.StatusRequestHeaderFieldsTooLarge {
					t.Fatalf("a %d-byte header was refused as too large", len(a.value))
				}
				t.Logf("refused by net/http: %d", resp.StatusCode)
				return
			case http.StatusUnauthorized:
				answered++
			default:
				t.Fatalf("answer %d %s", resp.StatusCode, body)
			}
			id := resp.Header.Get("X-Request-Id")
			if !requestid.Valid(id) {
				t.Fatalf("answered request id %q", id)
			}
			if id == a.value {
				t.Fatalf("a hostile id was kept: %q", id)
			}
			var eb struct {
				Error     string `json:"error"`
				RequestID string `json:"request_id"`
			}
			if err := json.Unmarshal(body, &eb); err != nil || eb.RequestID != id || eb.Error != "unauthenticated" {
				t.Fatalf("error body %s", body)
			}
		})
	}
	// A valid client id is kept and echoed.
	resp, _ := e.rawGet("/v1/admin/tasks", "X-Request-Id: trace-42.a_b", "Authorization: Bearer x")
	if got := resp.Header.Get("X-Request-Id"); got != "trace-42.a_b" {
		t.Fatalf("a valid id came back as %q", got)
	}
	// The same through the contract-checking client.
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/v1/admin/tasks", nil)
	req.Header.Set("X-Request-Id", strings.Repeat("z", 10<<10))
	r, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusUnauthorized || len(r.Header.Get("X-Request-Id")) > requestid.MaxLen {
		t.Fatalf("answer %d, id %q", r.StatusCode, r.Header.Get("X-Request-Id"))
	}

	trail := e.audit.String()
	lines := strings.Split(strings.TrimSuffix(trail, "\n"), "\n")
	if len(lines) < answered+2 || answered < 5 {
		t.Fatalf("%d audit lines for %d denied calls that reached Valet", len(lines), answered+2)
	}
	for i, l := range lines {
		if len(l) > 4<<10 {
			t.Fatalf("audit line %d is %d bytes", i+1, len(l))
		}
		if strings.Contains(l, "rrrrrrrr") || strings.Contains(l, "qqqqqqqq") || strings.Contains(l, "zzzzzzzz") {
			t.Fatalf("audit line %d carries an attacker's id: %.200s", i+1, l)
		}
	}
	if _, err := audit.Verify(strings.NewReader(trail)); err != nil {
		t.Fatalf("valet audit verify (file): %v", err)
	}
	if _, err := audit.VerifyStream(context.Background(), e.inc.rc, "valet"); err != nil {
		t.Fatalf("valet audit verify --redis: %v", err)
	}
	if logs := e.inc.logs.String(); strings.Contains(logs, "rrrrrrrr") || strings.Contains(logs, "qqqqqqqq") {
		t.Fatal("the log carries an attacker's id")
	}

	// Restart: the trail is opened and continued as `valet serve` does.
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, []byte(trail), 0o600); err != nil {
		t.Fatal(err)
	}
	l, c, err := audit.OpenFile(path)
	if err != nil {
		t.Fatalf("restart refused: %v", err)
	}
	if err := l.Record(context.Background(), broker.Event{Type: "restarted"}); err != nil {
		t.Fatal(err)
	}
	c.Close()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if last, err := audit.Verify(f); err != nil || int(last.Seq) != len(lines)+1 {
		t.Fatalf("after restart: seq %d, %v", last.Seq, err)
	}
}
