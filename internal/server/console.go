package server

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/valet-dev/valet/console"
)

// ConsoleOptions configure the web console (package console).
type ConsoleOptions struct {
	// SignIn is the relying party of an admin issuer (*identity.Login).
	SignIn console.SignIn
	// Trail, when set, feeds the live view and the audit chain status.
	Trail console.Trail
	// SessionTTL caps a session (0: console's default).
	SessionTTL time.Duration
}

// withConsole serves the web console at /console beside api.
func (s *Server) withConsole(co *ConsoleOptions, api http.Handler) (http.Handler, error) {
	if s.admin == nil {
		return nil, errors.New("server: the console needs the admin API (admin issuers and roles)")
	}
	c, err := console.New(console.Config{Admin: s.admin, SignIn: co.SignIn, Approvals: s.steps, Trail: co.Trail,
		PublicURL: s.o.PublicURL, SessionTTL: co.SessionTTL, Logger: s.log, Now: s.o.Now})
	if err != nil {
		return nil, err
	}
	ch := c.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/console" || strings.HasPrefix(r.URL.Path, "/console/") {
			ch.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	}), nil
}
