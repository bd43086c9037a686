// Package toolserver is an example tool server that accepts Valet task
// tokens through the verify package: a tiny ticket system whose tools are
// tickets.read (GET /tickets/{id}), tickets.comment
// (POST /tickets/{id}/comments) and the sensitive tickets.delete
// (DELETE /tickets/{id}), which needs a one-shot action token for the
// arguments {"ticket": "<id>"}.
package toolserver

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/valet-dev/valet/verify"
)

// Server holds the tickets.
type Server struct {
	v        *verify.Verifier
	mu       sync.Mutex
	comments map[string][]string
	deleted  map[string]bool
}

// New returns the tool server's handler, every route behind v.
func New(v *verify.Verifier) http.Handler {
	s := &Server{v: v, comments: map[string][]string{}, deleted: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tickets/{id}", s.read)
	mux.HandleFunc("POST /tickets/{id}/comments", s.comment)
	top := http.NewServeMux()
	top.HandleFunc("DELETE /tickets/{id}", s.delete) // sensitive: checks its own action token
	top.Handle("/", v.Middleware(ToolOf)(mux))
	return top
}

// delete is the sensitive tool tickets.delete: the verifier checks the
// action token against the arguments this handler is about to act on.
func (s *Server) delete(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	c, err := s.v.CheckAction(r.Context(), r, "tickets.delete", map[string]any{"ticket": id})
	if err != nil {
		var e *verify.Error
		status := http.StatusInternalServerError
		msg := "internal error"
		if errors.As(err, &e) {
			status, msg = e.Status, e.Message
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": http.StatusText(status), "message": msg})
		return
	}
	s.mu.Lock()
	s.deleted[id] = true
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"deleted": id, "by": c.Actor(), "task_id": c.TaskID})
}

// ToolOf names the tool a request calls; "" for anything else, which the
// verifier refuses.
func ToolOf(r *http.Request) string {
	switch {
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/tickets/"):
		return "tickets.read"
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/comments"):
		return "tickets.comment"
	}
	return ""
}

func (s *Server) read(w http.ResponseWriter, r *http.Request) {
	c, _ := verify.FromContext(r.Context())
	s.mu.Lock()
	comments := append([]string{}, s.comments[r.PathValue("id")]...)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"id": r.PathValue("id"), "title": "Printer on fire",
		"comments": comments, "read_by": c.Actor(), "task_id": c.TaskID})
}

func (s *Server) comment(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
	if err != nil {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.comments[r.PathValue("id")] = append(s.comments[r.PathValue("id")], string(body))
	s.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
}
