package httpapi

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/requestid"
)

// TestRequestIDIsValets guards issue 9 #1: a client's X-Request-Id is kept
// only when it is at most 64 characters of [A-Za-z0-9._-]; anything else
// (long, CR/LF, ANSI, unicode, spaces, empty) is replaced by an id of
// Valet's own, which the response header, the error body and the domain's
// context all carry. Before the fix chi adopted any value up to the
// header cap.
func TestRequestIDIsValets(t *testing.T) {
	a := &api{log: slog.New(slog.DiscardHandler)}
	var seen string
	h := a.requestContext(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = requestid.From(r.Context())
		a.writeError(w, r, broker.Errorf(broker.CodeForbidden, "no"))
	}))
	ok64 := strings.Repeat("a", 64)
	cases := []struct {
		name, sent string
		keep       bool
	}{
		{"plain", "abc-123_X.y", true},
		{"64 chars", ok64, true},
		{"65 chars", ok64 + "b", false},
		{"1 MB", strings.Repeat("r", 1<<20), false},
		{"CR LF", "abc\r\nX-Evil: 1", false},
		{"ANSI", "\x1b[31mred", false},
		{"unicode", "ид-запроса", false},
		{"zero width", "abc\u200b", false},
		{"space", "a b", false},
		{"slash", "a/b", false},
		{"empty", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/x", nil)
			r.Header[requestIDHeader] = []string{tc.sent}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			got := w.Header().Get(requestIDHeader)
			if !requestid.Valid(got) || got != seen {
				t.Fatalf("answered id %q, context id %q", got, seen)
			}
			if tc.keep != (got == tc.sent) {
				t.Fatalf("sent %.40q, answered %q; keep = %v", tc.sent, got, tc.keep)
			}
			var body errorBody
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body.RequestID != got {
				t.Fatalf("error body %s does not name %q", w.Body.Bytes(), got)
			}
		})
	}
}

// TestPanicAnswersInTheErrorShape guards the issue 9 low: chi's Recoverer
// wrote a bare 500 and printed the panic to stderr. Now the panic is one
// slog Error line with the request id, and the client gets the contract's
// Error body.
func TestPanicAnswersInTheErrorShape(t *testing.T) {
	var logs bytes.Buffer
	a := &api{log: slog.New(slog.NewJSONHandler(&logs, nil))}
	h := a.requestContext(a.recoverer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom " + strings.Repeat("s", 1000))
	})))
	r := httptest.NewRequest(http.MethodPost, "/v1/tasks", nil)
	r.Header.Set(requestIDHeader, "rid-1")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var body errorBody
	if w.Code != http.StatusInternalServerError || json.Unmarshal(w.Body.Bytes(), &body) != nil ||
		body.Error != broker.CodeInternal || body.RequestID != "rid-1" || strings.Contains(w.Body.String(), "boom") {
		t.Fatalf("answer %d %s", w.Code, w.Body.Bytes())
	}
	var line map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "handler panicked" {
			line = m
		}
	}
	if line == nil || line["request_id"] != "rid-1" || line["level"] != "ERROR" {
		t.Fatalf("no panic line with the request id in %s", logs.String())
	}
	if p, _ := line["panic"].(string); len(p) > maxPanicMessage+8 || !strings.HasPrefix(p, "boom") {
		t.Fatalf("panic message %q not bounded", p)
	}
	if st, _ := line["stack"].(string); !strings.Contains(st, "TestPanicAnswersInTheErrorShape") {
		t.Fatalf("stack %q does not name the panicking function", st)
	}
}

// TestAbortHandlerPanicPassesThrough: http.ErrAbortHandler keeps its
// meaning (abort the response quietly) for net/http.
func TestAbortHandlerPanicPassesThrough(t *testing.T) {
	a := &api{log: slog.New(slog.DiscardHandler)}
	h := a.recoverer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }))
	defer func() {
		if v := recover(); v != http.ErrAbortHandler { //nolint:errorlint // net/http compares it the same way
			t.Fatalf("recovered %v, want http.ErrAbortHandler", v)
		}
	}()
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
}

// TestTimeoutAnswers503InTheErrorShape guards the issue 9 low: chi's
// Timeout answered a bodiless 504 outside the contract. A handler that
// runs past the request timeout and answers nothing now gets a 503 Error
// body; one that answered in time is left alone.
func TestTimeoutAnswers503InTheErrorShape(t *testing.T) {
	a := &api{log: slog.New(slog.DiscardHandler)}
	slow := a.requestContext(a.timeout(time.Millisecond)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // a handler waiting on a dependency until its deadline
	})))
	w := httptest.NewRecorder()
	slow.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/tasks/x", nil))
	var body errorBody
	if w.Code != http.StatusServiceUnavailable || json.Unmarshal(w.Body.Bytes(), &body) != nil ||
		body.Error != broker.CodeUnavailable || body.RequestID == "" || w.Header().Get("Retry-After") == "" {
		t.Fatalf("answer %d %s", w.Code, w.Body.Bytes())
	}
	done := a.timeout(time.Hour)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	w = httptest.NewRecorder()
	done.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/x", nil))
	if w.Code != http.StatusNoContent {
		t.Fatalf("answer %d", w.Code)
	}
}

// TestErrorBodiesAreBounded: messages that quote client input (an unknown
// method or path) are cut in the body and the log.
func TestErrorBodiesAreBounded(t *testing.T) {
	var logs bytes.Buffer
	a := &api{log: slog.New(slog.NewJSONHandler(&logs, nil))}
	r := httptest.NewRequest(http.MethodGet, "/"+strings.Repeat("p", 60<<10), nil)
	w := httptest.NewRecorder()
	a.writeError(w, r, broker.Errorf(broker.CodeNotFound, "no route for %s", strings.Repeat("m", 60<<10)))
	if w.Body.Len() > 2*broker.MaxAuditString || logs.Len() > 4*broker.MaxAuditString {
		t.Fatalf("body %d bytes, log %d bytes", w.Body.Len(), logs.Len())
	}
}
