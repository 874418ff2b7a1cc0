package web

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

// DocsPrefix is where the API reference lives: /docs is its page, /docs/*
// its files (Swagger UI, vendored into dist/docs by vite.config.ts).
const DocsPrefix = "/docs/"

// DocsHandler serves the interactive API reference: dist/docs/index.html at
// /docs and /docs/, the other files of dist/docs below /docs/, under the
// console's Content-Security-Policy (this origin only). It reads
// /openapi.json.
func DocsHandler() http.Handler {
	files, err := fs.Sub(dist, "dist/docs")
	if err != nil {
		panic(err) // dist is embedded at build time
	}
	return docsHandler(files)
}

func docsHandler(files fs.FS) http.Handler {
	assets := map[string]asset{}
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		panic(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		body, err := fs.ReadFile(files, e.Name())
		if err != nil {
			panic(err)
		}
		sum := sha256.Sum256(body)
		assets[e.Name()] = asset{body: body, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, DocsPrefix)
		if r.URL.Path == strings.TrimSuffix(DocsPrefix, "/") || name == "" {
			name = "index.html"
		}
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-cache")
		a, ok := assets[name]
		if !ok || strings.Contains(name, "/") {
			http.NotFound(w, r)
			return
		}
		if ct := mime.TypeByExtension(path.Ext(name)); ct != "" {
			h.Set("Content-Type", ct)
		} else {
			h.Set("Content-Type", "text/plain; charset=utf-8")
		}
		h.Set("ETag", a.etag)
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
	})
}
