package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/go-chi/chi/v5/middleware"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/requestid"
)

// requestIDHeader carries the request id both ways.
const requestIDHeader = "X-Request-Id"

// requestContext gives every request an id of Valet's own and carries it
// into the domain's context, so logs, audit events and error bodies name
// it. A client's X-Request-Id is kept only when it fits
// requestid.Valid (at most 64 characters of [A-Za-z0-9._-]); any other
// value, of any length or content, is replaced. The id is echoed in the
// X-Request-Id response header.
func (a *api) requestContext(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(requestIDHeader)
		if !requestid.Valid(id) {
			id = newRequestID()
		}
		w.Header().Set(requestIDHeader, id)
		next.ServeHTTP(w, r.WithContext(requestid.With(r.Context(), id)))
	})
}

// newRequestID is "req-" and 96 random bits in hex.
func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return "req-" + hex.EncodeToString(b[:])
}

// maxPanicMessage bounds the panic value's text in the log line.
const maxPanicMessage = 256

// recoverer turns a handler's panic into a 500 in the error shape of the
// contract and one Error line in the log: the request id, the panic value's
// type, its message cut to maxPanicMessage bytes, and the functions on the
// stack (names and lines only, never argument values). http.ErrAbortHandler
// is passed on, as net/http expects.
func (a *api) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler { //nolint:errorlint // net/http compares it the same way
				panic(v)
			}
			msg := fmt.Sprint(v)
			if len(msg) > maxPanicMessage {
				msg = msg[:maxPanicMessage] + "…"
			}
			a.log.LogAttrs(r.Context(), slog.LevelError, "handler panicked",
				slog.String("request_id", requestid.From(r.Context())), slog.String("method", r.Method),
				slog.String("path", boundedPath(r)), slog.String("panic_type", fmt.Sprintf("%T", v)),
				slog.String("panic", msg), slog.String("stack", panicFrames()))
			if ww.Status() != 0 {
				return // the answer has begun: nothing coherent can be added
			}
			a.writeError(ww, r, &broker.Error{Code: broker.CodeInternal, Message: "internal error"})
		}()
		next.ServeHTTP(ww, r)
	})
}

// panicFrames lists the stack as "function file:line" entries, without the
// argument values a debug.Stack would print.
func panicFrames() string {
	pcs := make([]uintptr, 32)
	n := runtime.Callers(4, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	var b strings.Builder
	for {
		f, more := frames.Next()
		fmt.Fprintf(&b, "%s %s:%d; ", f.Function, f.File, f.Line)
		if !more {
			return b.String()
		}
	}
}

// boundedPath is the path cut to a loggable length.
func boundedPath(r *http.Request) string {
	return broker.Bound(r.URL.Path, broker.MaxLoggedPath)
}

// timeout bounds every route but the revocation stream (which lives as
// long as its client) by d: the handler's context ends at d, and a handler
// that has answered nothing by then gets a 503 in the error shape.
func (a *api) timeout(d time.Duration) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == streamPath {
				next.ServeHTTP(w, r)
				return
			}
			ctx, cancel := context.WithTimeout(r.Context(), d)
			defer cancel()
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			r = r.WithContext(ctx)
			next.ServeHTTP(ww, r)
			if ww.Status() == 0 && errors.Is(ctx.Err(), context.DeadlineExceeded) {
				a.writeError(ww, r, &broker.Error{Code: broker.CodeUnavailable,
					Message: fmt.Sprintf("the request took longer than %s", d), Err: ctx.Err()})
			}
		})
	}
}
