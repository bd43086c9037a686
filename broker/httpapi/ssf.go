package httpapi

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/ssf"
)

// ssfRoutes adds the SSF transmitter (metadata, stream management, poll)
// and receiver, for whichever is configured. Stream management and poll
// pass the admin check: reading needs viewer, changing a stream admin.
func (a *api) ssfRoutes(r chi.Router) {
	if t := a.opts.SSF; t != nil && a.opts.Admin != nil {
		r.Get("/.well-known/ssf-configuration", a.ssfMetadata)
		r.Post("/ssf/streams", a.ssfCreate)
		r.Get("/ssf/streams", a.ssfRead)
		r.Patch("/ssf/streams", a.ssfUpdate(false))
		r.Put("/ssf/streams", a.ssfUpdate(true))
		r.Delete("/ssf/streams", a.ssfDelete)
		r.Get("/ssf/status", a.ssfStatus)
		r.Post("/ssf/status", a.ssfSetStatus)
		r.Post("/ssf/subjects:add", a.ssfSubject(true))
		r.Post("/ssf/subjects:remove", a.ssfSubject(false))
		r.Post("/ssf/verify", a.ssfVerify)
		r.Post("/ssf/poll/{stream_id}", a.ssfPoll)
	}
	if rc := a.opts.SSFReceiver; rc != nil {
		r.Post("/ssf/receive/{transmitter}", rc.ServeHTTP)
	}
}

func (a *api) ssfMetadata(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.opts.SSF.Metadata())
}

func (a *api) ssfCreate(w http.ResponseWriter, r *http.Request) {
	p, ok := a.admin(w, r, incident.RoleAdmin, "ssf.stream.create")
	if !ok {
		return
	}
	var c ssf.StreamConfig
	if err := decodeJSON(r, &c); err != nil {
		a.writeError(w, r, err)
		return
	}
	out, err := a.opts.SSF.CreateStream(r.Context(), p.Actor(), c)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, out)
}

func (a *api) ssfRead(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "ssf.stream.read"); !ok {
		return
	}
	if id := r.URL.Query().Get("stream_id"); id != "" {
		out, err := a.opts.SSF.Stream(r.Context(), id)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	out, err := a.opts.SSF.Streams(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *api) ssfUpdate(replace bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, ok := a.admin(w, r, incident.RoleAdmin, "ssf.stream.update"); !ok {
			return
		}
		var c ssf.StreamConfig
		if err := decodeJSON(r, &c); err != nil {
			a.writeError(w, r, err)
			return
		}
		out, err := a.opts.SSF.UpdateStream(r.Context(), c, replace)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

func (a *api) ssfDelete(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleAdmin, "ssf.stream.delete"); !ok {
		return
	}
	if err := a.opts.SSF.DeleteStream(r.Context(), r.URL.Query().Get("stream_id")); err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) ssfStatus(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "ssf.status.read"); !ok {
		return
	}
	out, err := a.opts.SSF.Status(r.Context(), r.URL.Query().Get("stream_id"))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *api) ssfSetStatus(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleAdmin, "ssf.status.update"); !ok {
		return
	}
	var st ssf.StreamStatus
	if err := decodeJSON(r, &st); err != nil {
		a.writeError(w, r, err)
		return
	}
	out, err := a.opts.SSF.SetStatus(r.Context(), st)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *api) ssfSubject(add bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, ok := a.admin(w, r, incident.RoleAdmin, "ssf.subjects"); !ok {
			return
		}
		var req ssf.SubjectRequest
		if err := decodeJSON(r, &req); err != nil {
			a.writeError(w, r, err)
			return
		}
		if add {
			if err := a.opts.SSF.AddSubject(r.Context(), req); err != nil {
				a.writeError(w, r, err)
				return
			}
			w.WriteHeader(http.StatusOK)
			return
		}
		if err := a.opts.SSF.RemoveSubject(r.Context(), req); err != nil {
			a.writeError(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

func (a *api) ssfVerify(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "ssf.verify"); !ok {
		return
	}
	var req ssf.VerifyRequest
	if err := decodeJSON(r, &req); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.opts.SSF.Verify(r.Context(), req); err != nil {
		a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *api) ssfPoll(w http.ResponseWriter, r *http.Request) {
	if _, ok := a.admin(w, r, incident.RoleViewer, "ssf.poll"); !ok {
		return
	}
	var req ssf.PollRequest
	if err := decodeJSON(r, &req); err != nil {
		a.writeError(w, r, err)
		return
	}
	out, err := a.opts.SSF.Poll(r.Context(), chi.URLParam(r, "stream_id"), req)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
}
