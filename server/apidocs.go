package server

import (
	"net/http"

	"github.com/kgents/kgents-go/gen/openapi"
	"github.com/kgents/kgents-go/web"
)

// mountAPIReference serves the API reference (docs/api.md → API reference):
// /openapi.json (OpenAPI 3.1), /openapi/v2.json (Swagger 2), both generated
// from the .proto files by `make generate`, and /docs, the interactive
// reference (Swagger UI, embedded by package web).
func (s *Server) mountAPIReference(mux *http.ServeMux) {
	doc := func(route string, body []byte) {
		mux.Handle(route, s.routed(route, onlyMethods(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "public, max-age=300")
			_, _ = w.Write(body)
		}, http.MethodGet, http.MethodHead)))
	}
	doc("/openapi.json", openapi.Document)
	doc("/openapi/v2.json", openapi.DocumentV2)
	h := s.routed("/docs", onlyMethods(web.DocsHandler().ServeHTTP, http.MethodGet, http.MethodHead))
	mux.Handle("/docs", h)
	mux.Handle(web.DocsPrefix, h)
}
