package server

import (
	"net/http"

	"github.com/kgents/kgents-go/web"
)

// mountConsole serves the web console (web/, SPEC §4.15) at /console/, with
// /console redirected there.
func (s *Server) mountConsole(mux *http.ServeMux) {
	h := s.routed(web.Prefix, onlyMethods(web.Handler().ServeHTTP, http.MethodGet, http.MethodHead))
	mux.Handle(web.Prefix, h)
	mux.Handle("/console", h)
}
