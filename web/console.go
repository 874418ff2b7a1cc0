// Package web serves the console (/console): the app built from this
// directory's sources by `npm run build` into dist/, committed and embedded
// in the binary so that kgentsd needs nothing else at run time.
// docs/console.md describes the app and how it is built and tested.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed dist
var dist embed.FS

// Prefix is where the console lives.
const Prefix = "/console/"

// contentSecurityPolicy allows only this origin: the app loads nothing from
// anywhere else, uses no inline script or style, and talks only to the API
// that serves it.
const contentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"

// Handler serves the console under Prefix: its files, index.html for every
// client route (SPA fallback), and /console redirected to /console/.
// Content-hashed assets are cached for a year as immutable; everything else
// (index.html above all) is revalidated on every load.
func Handler() http.Handler {
	files, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // dist is embedded at build time
	}
	return handler(files)
}

// asset is one embedded file, with the ETag of its content.
type asset struct {
	body []byte
	etag string
}

func handler(files fs.FS) http.Handler {
	assets := map[string]asset{}
	err := fs.WalkDir(files, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := fs.ReadFile(files, name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		assets[name] = asset{body: body, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	if err != nil {
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		root := strings.TrimSuffix(Prefix, "/")
		if r.URL.Path == root {
			target := Prefix
			if r.URL.RawQuery != "" {
				target += "?" + r.URL.RawQuery
			}
			http.Redirect(w, r, target, http.StatusMovedPermanently)
			return
		}
		name := strings.TrimPrefix(strings.TrimPrefix(path.Clean(r.URL.Path), root), "/")
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		a, ok := assets[name]
		switch {
		case ok && strings.HasPrefix(name, "assets/"):
			h.Set("Cache-Control", "public, max-age=31536000, immutable")
		case ok && name != "index.html":
			h.Set("Cache-Control", "no-cache")
		case strings.HasPrefix(name, "assets/") || path.Ext(name) != "":
			// A missing file is a 404, not the app: only client routes
			// (no file extension) fall back to index.html.
			h.Set("Cache-Control", "no-cache")
			http.NotFound(w, r)
			return
		default:
			name, a = "index.html", assets["index.html"]
			if a.body == nil {
				http.Error(w, "console not built", http.StatusInternalServerError)
				return
			}
			h.Set("Cache-Control", "no-cache")
		}
		if ct := mime.TypeByExtension(path.Ext(name)); ct != "" {
			h.Set("Content-Type", ct)
		}
		h.Set("ETag", a.etag)
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.body))
	})
}
