package server

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/kgents/kgents-go/apijson"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/telemetry"
)

// httpHandler is the whole REST surface: system endpoints, the SSE routes,
// and grpc-gateway for everything else, behind the HTTP middleware.
func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	get := func(route string, h http.HandlerFunc) {
		mux.Handle(route, s.routed(route, onlyMethods(h, http.MethodGet, http.MethodHead)))
	}
	get("/health", s.handleHealth)
	get("/health/saas", s.handleHealthSaaS)
	get("/livez", s.handleLivez)
	get("/readyz", s.handleReadyz)
	get("/{$}", s.handleRoot)
	s.mountConsole(mux)
	s.mountAPIReference(mux)
	if s.cfg.MetricsPort == 0 {
		mux.Handle("/metrics", s.routed("/metrics", onlyMethods(s.metricsHandler().ServeHTTP, http.MethodGet)))
		if s.cfg.Pprof {
			mountPprof(mux)
		}
	}
	for _, rt := range s.sseRoutes() {
		if rt.route == routeSendMessage {
			continue // served by the dispatcher below
		}
		mux.Handle(rt.route, s.serveSSE(rt))
	}
	mux.Handle(routeSendMessage, s.messagesDispatcher())
	s.mountBilling(mux)
	mux.Handle("/", s.gwMux)
	return s.middleware(mux)
}

// mountPprof serves Go's profiler (KGENTS_PPROF=true).
func mountPprof(mux *http.ServeMux) {
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// routed records the route template of a system endpoint.
func (s *Server) routed(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if st := callStateFrom(r.Context()); st != nil {
			st.setRoute(route)
		}
		h.ServeHTTP(w, r)
	})
}

func onlyMethods(h http.HandlerFunc, methods ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !slices.Contains(methods, r.Method) {
			w.Header().Set("Allow", strings.Join(methods, ", "))
			writeJSONError(w, http.StatusMethodNotAllowed, codes.Unimplemented, "Method Not Allowed")
			return
		}
		h(w, r)
	})
}

// messagesDispatcher routes POST /v1/kgent/sessions/{id}/messages: a body
// with "stream": false goes to SendMessage through the gateway (JSON), any
// other POST is streamed with StreamMessage as SSE. GET is ListMessages.
func (s *Server) messagesDispatcher() http.Handler {
	sse := s.serveSSE(s.sseRoute(routeSendMessage))
	probeOpts := apijson.UnmarshalOptions{Required: bodyRequiredFor(sessionsv1.SessionsService_StreamMessage_FullMethodName)}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			s.gwMux.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			s.writePreCallError(r.Context(), w, r, "", err)
			return
		}
		// A body that does not parse goes to the gateway too, which answers
		// it exactly as it would any other bad body.
		var probe sessionsv1.StreamMessageRequest
		perr := probeOpts.Unmarshal(body, &probe)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if perr != nil || (probe.Stream != nil && !probe.GetStream()) {
			s.gwMux.ServeHTTP(w, r)
			return
		}
		sse.ServeHTTP(w, r)
	})
}

// middleware wraps the REST surface, outermost first: panic safety, request
// id and timing and access metrics, dropping the Grpc-* headers grpc-gateway
// would obey, CORS, the body limit, and the ?api_key= lift for EventSource
// clients.
func (s *Server) middleware(next http.Handler) http.Handler {
	h := s.liftQueryKey(next)
	h = s.limitBody(h)
	h = s.cors(h)
	h = grpcControlHeaders(h)
	h = s.observe(h)
	return h
}

// observe gives the request an id, times it (X-Response-Time is the time to
// headers), recovers panics, counts it, and logs requests that never reached
// a gRPC handler (the interceptors log those that did) and every 5xx,
// wherever it came from (ERROR for 500, WARN for the others), each with its
// request id.
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get("X-Request-ID")
		if !telemetry.ValidRequestID(id) {
			id = telemetry.NewRequestID()
			r.Header.Set("X-Request-ID", id)
		}
		st := &callState{requestID: id, badURL: urlNotUTF8(r.URL)}
		ctx := telemetry.WithRequestID(withCallState(r.Context(), st), id)
		rw := &responseWriter{ResponseWriter: w, start: start}
		w.Header().Set("X-Request-ID", id)
		defer func() {
			if p := recover(); p != nil {
				if err, ok := p.(error); ok && errors.Is(err, http.ErrAbortHandler) {
					panic(p)
				}
				s.log.ErrorContext(ctx, "panic in HTTP handler", "panic", p, "path", r.URL.Path)
				if !rw.wroteHeader {
					writeJSONError(rw, http.StatusInternalServerError, codes.Internal, "internal error (request "+id+")")
				}
			}
			route := st.routeOr("unmatched")
			elapsed := time.Since(start)
			code := rw.status()
			s.metrics.observeHTTP(r.Method, route, code, elapsed)
			if level, ok := httpLogLevel(route, code, st.reached.Load()); ok {
				s.log.LogAttrs(ctx, level, "http", slog.String("method", r.Method), slog.String("route", route),
					slog.Int("status", code), slog.Float64("duration_ms", float64(elapsed.Microseconds())/1000))
			}
		}()
		next.ServeHTTP(rw, r.WithContext(ctx))
	})
}

// httpLogLevel decides the "http" log line of a response: every 5xx (a 500
// at ERROR, other 5xx at WARN), and, at INFO (DEBUG for probes and
// scrapes), any request that never reached a gRPC handler, whose
// interceptors would have logged it.
func httpLogLevel(route string, code int, reached bool) (slog.Level, bool) {
	switch {
	case code == http.StatusInternalServerError:
		return slog.LevelError, true
	case code >= 500:
		return slog.LevelWarn, true
	case reached:
		return 0, false
	}
	switch route {
	case "/health", "/livez", "/readyz", "/metrics", "/health/saas":
		return slog.LevelDebug, true
	}
	return slog.LevelInfo, true
}

// responseWriter stamps X-Response-Time when headers go out and remembers the
// status. It keeps Flush and the http.ResponseController working (Unwrap).
type responseWriter struct {
	http.ResponseWriter
	start       time.Time
	code        int
	wroteHeader bool
}

func (w *responseWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	w.code = code
	w.Header().Set("X-Response-Time", strconv.FormatInt(time.Since(w.start).Milliseconds(), 10)+"ms")
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *responseWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if hj, ok := w.ResponseWriter.(http.Hijacker); ok {
		return hj.Hijack()
	}
	return nil, nil, errors.New("hijack not supported")
}

func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *responseWriter) status() int {
	if !w.wroteHeader {
		return http.StatusOK
	}
	return w.code
}

// requestIDOf is the request's id (set by observe).
func requestIDOf(r *http.Request) string {
	if st := callStateFrom(r.Context()); st != nil {
		return st.requestID
	}
	return telemetry.RequestID(r.Context())
}

// Headers browsers may send and read (SPEC §4.1).
const (
	corsAllowHeaders  = "Content-Type, X-API-Key, Authorization, Idempotency-Key, Last-Event-ID, X-Request-ID, traceparent, tracestate"
	corsExposeHeaders = "X-Request-ID, X-Response-Time, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, X-Tokens-Month, Retry-After, Idempotent-Replayed"
	corsAllowMethods  = "GET, POST, DELETE, OPTIONS"
)

// cors answers preflights and marks responses for allowed origins. With
// CORS_ORIGINS=* any origin is allowed, without credentials.
func (s *Server) cors(next http.Handler) http.Handler {
	anyOrigin := len(s.cfg.HTTP.CORSOrigins) == 1 && s.cfg.HTTP.CORSOrigins[0] == "*"
	allowed := func(origin string) bool {
		return anyOrigin || slices.Contains(s.cfg.HTTP.CORSOrigins, origin)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Add("Vary", "Origin")
		preflight := r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != ""
		if !allowed(origin) {
			if preflight {
				if st := callStateFrom(r.Context()); st != nil {
					st.setRoute("preflight")
				}
				writeJSONError(w, http.StatusForbidden, codes.PermissionDenied, "origin not allowed: "+origin)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if anyOrigin {
			h.Set("Access-Control-Allow-Origin", "*")
		} else {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
		}
		if preflight {
			if st := callStateFrom(r.Context()); st != nil {
				st.setRoute("preflight")
			}
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
			h.Set("Access-Control-Allow-Methods", corsAllowMethods)
			h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
			h.Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		next.ServeHTTP(w, r)
	})
}

// limitBody caps request bodies. Reading past the cap fails the read and
// flags the request, which the error paths answer with 413.
func (s *Server) limitBody(next http.Handler) http.Handler {
	limit := s.cfg.HTTP.MaxBodyBytes
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, limit), st: callStateFrom(r.Context())}
		}
		next.ServeHTTP(w, r)
	})
}

type limitedBody struct {
	io.ReadCloser
	st *callState
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && b.st != nil && isMaxBytes(err) {
		b.st.bodyTooLarge.Store(true)
	}
	return n, err
}

// liftQueryKey moves ?api_key= into X-API-Key on GET event streams, because
// a browser EventSource cannot send headers. The parameter is removed from
// the URL so it never reaches a log line.
func (s *Server) liftQueryKey(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/events") && r.URL.RawQuery != "" {
			q := r.URL.Query()
			if key := q.Get("api_key"); key != "" {
				if r.Header.Get("X-API-Key") == "" && r.Header.Get("Authorization") == "" {
					r.Header.Set("X-API-Key", key)
				}
				q.Del("api_key")
				r.URL.RawQuery = q.Encode()
			}
		}
		next.ServeHTTP(w, r)
	})
}

// errorEventPayload is the data of an in-band SSE error event.
func errorEventPayload(msg, typ string) proto.Message {
	return &soulv1.DialogueError{Error: msg, Type: typ}
}

// httpMetrics are the REST surface's Prometheus metrics (reference §10).
// The observers of each label set are cached: resolving labels on every
// request showed up in profiles.
type httpMetrics struct {
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	cache    sync.Map // labelKey -> *httpObservers
}

type labelKey struct {
	method, route string
	status        int
}

type httpObservers struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

func newHTTPMetrics(reg prometheus.Registerer) *httpMetrics {
	m := &httpMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kgents_api_requests_total",
			Help: "REST requests by method, route template and status.",
		}, []string{"method", "endpoint", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "kgents_api_request_latency_seconds",
			Help:    "REST request latency (whole response, streams included) by method and route template.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}, []string{"method", "endpoint"}),
	}
	reg.MustRegister(m.requests, m.latency)
	return m
}

func (m *httpMetrics) observeHTTP(method, route string, status int, d time.Duration) {
	switch method {
	case http.MethodGet, http.MethodPost, http.MethodDelete, http.MethodOptions, http.MethodHead, http.MethodPut, http.MethodPatch:
	default:
		method = "OTHER"
	}
	k := labelKey{method, route, status}
	o, ok := m.cache.Load(k)
	if !ok {
		o, _ = m.cache.LoadOrStore(k, &httpObservers{
			count:   m.requests.WithLabelValues(method, route, strconv.Itoa(status)),
			latency: m.latency.WithLabelValues(method, route),
		})
	}
	obs := o.(*httpObservers)
	obs.count.Inc()
	obs.latency.Observe(d.Seconds())
}
