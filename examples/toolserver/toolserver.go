// Package toolserver is an example tool server that accepts Valet task
// tokens through the verify package: a tiny ticket system whose tools are
// tickets.read (GET /tickets/{id}), tickets.comment
// (POST /tickets/{id}/comments) and the sensitive tickets.delete
// (DELETE /tickets/{id}), which needs a one-shot action token for the
// arguments {"ticket": "<id>"}. Each call is reported to Valet by the
// verifier; a comment carries an undo webhook (DELETE
// /tickets/{id}/comments/{cid} with a one-time undo key in its body), so
// `valet tasks rollback` can remove it.
package toolserver

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
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
	comments map[string][]comment
	deleted  map[string]bool
	h        http.Handler
}

// ServeHTTP serves the tool server's routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.h.ServeHTTP(w, r) }

// comment is one comment and the key that undoes it.
type comment struct {
	ID, Text, undoKey string
}

// New returns the tool server, every tool route behind v.
func New(v *verify.Verifier) *Server {
	s := &Server{v: v, comments: map[string][]comment{}, deleted: map[string]bool{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tickets/{id}", s.read)
	mux.HandleFunc("POST /tickets/{id}/comments", s.comment)
	top := http.NewServeMux()
	top.HandleFunc("DELETE /tickets/{id}", s.delete)                     // sensitive: checks its own action token
	top.HandleFunc("DELETE /tickets/{id}/comments/{cid}", s.undoComment) // Valet's rollback: the undo key authenticates
	top.Handle("/", v.Middleware(ToolOf)(mux))
	s.h = top
	return s
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
	s.v.Report(r, c, "tickets.delete", http.StatusOK, verify.Effect{SideEffect: "deleted ticket " + id})
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
	var texts []string
	for _, cm := range s.comments[r.PathValue("id")] {
		texts = append(texts, cm.Text)
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"id": r.PathValue("id"), "title": "Printer on fire",
		"comments": texts, "read_by": c.Actor(), "task_id": c.TaskID})
}

// comment is tickets.comment: it adds a comment and tells the verifier how
// to undo it.
func (s *Server) comment(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 4096))
	if err != nil {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	id := r.PathValue("id")
	cm := comment{ID: "c_" + randomHex(8), Text: string(body), undoKey: randomHex(16)}
	s.mu.Lock()
	s.comments[id] = append(s.comments[id], cm)
	s.mu.Unlock()
	undoBody, _ := json.Marshal(map[string]string{"undo_key": cm.undoKey})
	verify.Describe(r.Context(), verify.Effect{
		SideEffect: "added comment " + cm.ID + " to ticket " + id,
		Undo:       &verify.Undo{Method: http.MethodDelete, URL: baseURL(r) + "/tickets/" + id + "/comments/" + cm.ID, Body: string(undoBody)},
	})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(map[string]string{"id": cm.ID})
}

// undoComment removes a comment for Valet's rollback; the comment's own
// undo key, which only Valet holds (in the stored event), authenticates it.
func (s *Server) undoComment(w http.ResponseWriter, r *http.Request) {
	var body struct {
		UndoKey string `json:"undo_key"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&body); err != nil || body.UndoKey == "" {
		http.Error(w, "undo_key required", http.StatusBadRequest)
		return
	}
	id, cid := r.PathValue("id"), r.PathValue("cid")
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.comments[id]
	for i, cm := range list {
		if cm.ID == cid && subtle.ConstantTimeCompare([]byte(cm.undoKey), []byte(body.UndoKey)) == 1 {
			s.comments[id] = append(list[:i:i], list[i+1:]...)
			w.WriteHeader(http.StatusNoContent)
			return
		}
	}
	http.Error(w, "no such comment", http.StatusNotFound)
}

// Comments returns the texts of a ticket's comments.
func (s *Server) Comments(ticket string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, cm := range s.comments[ticket] {
		out = append(out, cm.Text)
	}
	return out
}

func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
