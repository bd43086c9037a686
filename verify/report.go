package verify

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
)

// Tool-call reports: after a checked call's handler has run, the verifier
// tells Valet what happened (POST /v1/tasks/{id}/events, authenticated by
// the task token it was called with and this server's client
// credentials), from a bounded queue so the response never waits. Run
// sends them; a full queue drops the report and counts it. The client
// credentials are what let Valet accept a report that arrives after the
// task ended or its token was revoked (late): the token alone is not.

// reportQueue is how many reports may wait to be sent.
const reportQueue = 1024

// Undo says how Valet can undo a call on rollback: a webhook it calls with
// Method, URL and Body. Body is stored by Valet but never audited or
// listed (only its SHA-256 prefix), so it may carry a one-time undo key.
type Undo struct {
	URL         string `json:"url"`
	Method      string `json:"method"`
	Body        string `json:"body,omitempty"`
	ContentType string `json:"content_type,omitempty"`
}

// Effect is what a handler says its call did.
type Effect struct {
	// SideEffect describes the change in a few words ("added comment c_1
	// to ticket 7"); empty for a read.
	SideEffect string
	// Undo, when set, is how to reverse it.
	Undo *Undo
}

// effectHolder is put in the request context by Middleware so the handler
// can describe its effect.
type effectHolder struct {
	mu sync.Mutex
	e  Effect
}

type effectKey struct{}

// Describe records, from inside a handler behind Middleware, the side
// effect of this call and how to undo it; the report sent after the
// handler returns carries them. Outside Middleware it does nothing.
func Describe(ctx context.Context, e Effect) {
	if h, ok := ctx.Value(effectKey{}).(*effectHolder); ok {
		h.mu.Lock()
		h.e = e
		h.mu.Unlock()
	}
}

type report struct {
	taskID, scheme, token string
	body                  []byte
}

// reports is the verifier's queue and counters.
type reports struct {
	q                     chan report
	sent, dropped, failed atomic.Int64
}

func newReports() *reports { return &reports{q: make(chan report, reportQueue)} }

// ReportStats counts the reports of tool calls: sent to Valet (and
// accepted), dropped because the queue was full, failed at Valet.
type ReportStats struct{ Sent, Dropped, Failed, Queued int64 }

// Reports returns the report counters.
func (v *Verifier) Reports() ReportStats {
	return ReportStats{Sent: v.reports.sent.Load(), Dropped: v.reports.dropped.Load(), Failed: v.reports.failed.Load(),
		Queued: int64(len(v.reports.q))}
}

// Report queues a report of a call of tool checked by Check or CheckAction
// on request r, which the handler answered with status; it never blocks.
// Middleware calls it for the calls it checks; a handler that checks
// with CheckAction calls it itself.
func (v *Verifier) Report(r *http.Request, c Claims, tool string, status int, e Effect) {
	raw, scheme := tokenOf(r)
	if raw == "" || c.TaskID == "" {
		return
	}
	outcome := "ok"
	if status < 200 || status > 299 {
		outcome = "error"
	}
	body, err := json.Marshal(struct {
		Tool       string `json:"tool"`
		Outcome    string `json:"outcome"`
		Status     int    `json:"status"`
		SideEffect string `json:"side_effect,omitempty"`
		Undo       *Undo  `json:"undo,omitempty"`
	}{tool, outcome, status, e.SideEffect, e.Undo})
	if err != nil {
		v.reports.dropped.Add(1)
		return
	}
	select {
	case v.reports.q <- report{taskID: c.TaskID, scheme: scheme, token: raw, body: body}:
	default:
		v.reports.dropped.Add(1)
		v.cfg.Logger.Warn("tool-call report dropped: queue full", "task_id", c.TaskID, "tool", tool)
	}
}

// sendReports sends queued reports until ctx ends.
func (v *Verifier) sendReports(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case rep := <-v.reports.q:
			if err := v.send(ctx, rep); err != nil {
				v.reports.failed.Add(1)
				v.cfg.Logger.WarnContext(ctx, "tool-call report failed", "task_id", rep.taskID, "err", err)
				continue
			}
			v.reports.sent.Add(1)
		}
	}
}

func (v *Verifier) send(ctx context.Context, rep report) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		v.cfg.Issuer+"/v1/tasks/"+url.PathEscape(rep.taskID)+"/events", bytes.NewReader(rep.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", rep.scheme+" "+rep.token)
	req.Header.Set("Valet-Client-Authorization", "Basic "+basicAuth(v.cfg.ClientID, v.cfg.ClientSecret))
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("reporting a tool call: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("reporting a tool call: status %d", resp.StatusCode)
	}
	return nil
}

func basicAuth(id, secret string) string {
	return base64.StdEncoding.EncodeToString([]byte(id + ":" + secret))
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
