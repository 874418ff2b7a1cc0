package lifecycletest

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"testing"
)

// StripeRequest is one request the SDK sent, as Stripe receives it.
type StripeRequest struct {
	Method, Path string
	Header       http.Header
	// Form is the form-encoded body (Stripe's API takes
	// application/x-www-form-urlencoded): "line_items[0][price]" and so on.
	Form url.Values
}

// Recorder is a reverse proxy in front of stripe-mock that records every
// request (stripe-mock answers canned objects, so what Stripe was asked is
// only visible here). Rewrite, when set, may change a request's form
// before it is forwarded, so that stripe-mock's own validation refuses it.
type Recorder struct {
	URL string // for STRIPE_API_BASE

	mu       sync.Mutex
	requests []StripeRequest
	rewrite  func(path string, form url.Values)
}

// StartRecorder starts the proxy to target (a stripe-mock base URL); it
// stops when the test ends.
func StartRecorder(t testing.TB, target string) *Recorder {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rec := &Recorder{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "read body", http.StatusBadRequest)
			return
		}
		form, err := url.ParseQuery(string(body))
		if err != nil {
			http.Error(w, "body is not form-encoded", http.StatusBadRequest)
			return
		}
		rec.mu.Lock()
		rec.requests = append(rec.requests, StripeRequest{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Form: form})
		rewrite := rec.rewrite
		rec.mu.Unlock()
		if rewrite != nil && len(body) > 0 {
			rewrite(r.URL.Path, form)
			body = []byte(form.Encode())
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.Header.Set("Content-Length", strconv.Itoa(len(body)))
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	rec.URL = srv.URL
	return rec
}

// Requests returns the requests recorded so far, oldest first.
func (r *Recorder) Requests() []StripeRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]StripeRequest(nil), r.requests...)
}

// Last returns the newest request to path, and whether there was one.
func (r *Recorder) Last(path string) (StripeRequest, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.requests) - 1; i >= 0; i-- {
		if r.requests[i].Path == path {
			return r.requests[i], true
		}
	}
	return StripeRequest{}, false
}

// Rewrite sets (nil: clears) the function applied to each later request's
// form before it is forwarded.
func (r *Recorder) Rewrite(f func(path string, form url.Values)) {
	r.mu.Lock()
	r.rewrite = f
	r.mu.Unlock()
}
