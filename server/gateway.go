package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"regexp"
	"strings"
	"sync/atomic"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kgents/kgents-go/apijson"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/auth"
)

// callState is what the HTTP layer learns about one request as it passes
// through the middleware, the gateway and the gRPC client: its route
// template, whether the gRPC call was made, whether the body was too large.
type callState struct {
	requestID    string
	route        atomic.Pointer[string]
	reached      atomic.Bool
	bodyTooLarge atomic.Bool
}

func (c *callState) setRoute(r string) { c.route.Store(&r) }

func (c *callState) routeOr(def string) string {
	if r := c.route.Load(); r != nil {
		return *r
	}
	return def
}

type callStateKey struct{}

func withCallState(ctx context.Context, s *callState) context.Context {
	return context.WithValue(ctx, callStateKey{}, s)
}

func callStateFrom(ctx context.Context) *callState {
	s, _ := ctx.Value(callStateKey{}).(*callState)
	return s
}

// markReached is a client interceptor on the gateway's connection: once it
// runs, a failure is the server's answer, not the gateway's own (a body it
// could not parse, say).
func markReachedUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if s := callStateFrom(ctx); s != nil {
		s.reached.Store(true)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

func markReachedStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if s := callStateFrom(ctx); s != nil {
		s.reached.Store(true)
	}
	return streamer(ctx, desc, cc, method, opts...)
}

// Incoming HTTP headers passed to gRPC as metadata (SPEC §4.1). Everything
// else is dropped, so a client cannot forge internal metadata. Authorization
// is absent because grpc-gateway always forwards it itself.
var incomingHeaders = map[string]string{
	"X-Api-Key":       "x-api-key",
	"Last-Event-Id":   "last-event-id",
	"Idempotency-Key": "idempotency-key",
	"Traceparent":     "traceparent",
	"Tracestate":      "tracestate",
	"X-Request-Id":    "x-request-id",
}

func incomingHeader(key string) (string, bool) {
	v, ok := incomingHeaders[textproto.CanonicalMIMEHeaderKey(key)]
	return v, ok
}

// Response metadata that are HTTP headers come out under their plain names.
var outgoingHeaders = map[string]string{
	"x-ratelimit-limit":     "X-RateLimit-Limit",
	"x-ratelimit-remaining": "X-RateLimit-Remaining",
	"x-ratelimit-reset":     "X-RateLimit-Reset",
	"x-tokens-month":        "X-Tokens-Month",
	"retry-after":           "Retry-After",
	"idempotent-replayed":   "Idempotent-Replayed",
}

func outgoingHeader(key string) (string, bool) {
	v, ok := outgoingHeaders[strings.ToLower(key)]
	return v, ok
}

// copyMetadataHeaders sets the allowed response metadata as HTTP headers.
func copyMetadataHeaders(h http.Header, mds ...metadata.MD) {
	for _, md := range mds {
		for k, vs := range md {
			if name, ok := outgoingHeader(k); ok && len(vs) > 0 {
				h[name] = []string{vs[len(vs)-1]}
			}
		}
	}
}

// newGatewayMux builds grpc-gateway's mux with the API's JSON, header rules
// and error handling.
func (s *Server) newGatewayMux() *runtime.ServeMux {
	return runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, gatewayMarshaler{}),
		runtime.WithIncomingHeaderMatcher(incomingHeader),
		runtime.WithOutgoingHeaderMatcher(func(k string) (string, bool) {
			name, ok := outgoingHeader(k)
			return name, ok
		}),
		runtime.WithOutgoingTrailerMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithMetadata(gatewayMetadata),
		runtime.WithErrorHandler(s.gatewayError),
		runtime.WithRoutingErrorHandler(routingError),
	)
}

// gatewayMetadata tells the gRPC side which REST route the call came in on
// (trusted only on the in-process connection, see interceptors.InfoFrom).
func gatewayMetadata(ctx context.Context, r *http.Request) metadata.MD {
	route, _ := runtime.HTTPPathPattern(ctx)
	if st := callStateFrom(ctx); st != nil && route != "" {
		st.setRoute(route)
	}
	return metadata.Pairs(interceptors.MDHTTPRoute, route, interceptors.MDHTTPMethod, r.Method)
}

// gatewayError writes a failed unary call.
func (s *Server) gatewayError(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	st := callStateFrom(r.Context())
	if st != nil && !st.reached.Load() {
		s.writePreCallError(w, r, err)
		return
	}
	if md, ok := runtime.ServerMetadataFromContext(ctx); ok {
		copyMetadataHeaders(w.Header(), md.HeaderMD, md.TrailerMD)
	}
	writeError(w, status.Convert(err), requestIDOf(r))
}

// writePreCallError answers a request that failed before any gRPC call was
// made: its body or query could not be read. Authentication still comes
// first (SPEC §4.1: a missing or unknown key is 401 even when the body does
// not parse), so the key is checked here with the same keyring.
func (s *Server) writePreCallError(w http.ResponseWriter, r *http.Request, err error) {
	if _, aerr := s.keyring.Authenticate(auth.KeyFromHTTP(r.Header)); aerr != nil {
		writeJSONError(w, http.StatusUnauthorized, codes.Unauthenticated, aerr.Error())
		return
	}
	if st := callStateFrom(r.Context()); st != nil && st.bodyTooLarge.Load() || isMaxBytes(err) {
		writeJSONError(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument,
			fmt.Sprintf("request body too large (limit %d bytes)", s.cfg.HTTP.MaxBodyBytes))
		return
	}
	var de *apijson.DecodeError
	if errors.As(err, &de) {
		writeJSONError(w, http.StatusBadRequest, codes.InvalidArgument, de.Error())
		return
	}
	// grpc-gateway wraps our decoder's errors in a status; its text is ours.
	// Its own query-parameter errors carry strconv's text: reword those.
	if s, ok := status.FromError(err); ok && s.Code() == codes.InvalidArgument {
		writeJSONError(w, http.StatusBadRequest, codes.InvalidArgument, rewordQueryError(s.Message()))
		return
	}
	writeError(w, status.Convert(err), requestIDOf(r))
}

func isMaxBytes(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe)
}

func routingError(_ context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, _ *http.Request, httpStatus int) {
	switch httpStatus {
	case http.StatusMethodNotAllowed:
		writeJSONError(w, httpStatus, codes.Unimplemented, "Method Not Allowed")
	case http.StatusBadRequest:
		writeJSONError(w, httpStatus, codes.InvalidArgument, "Bad Request")
	default:
		writeJSONError(w, http.StatusNotFound, codes.NotFound, "Not Found")
	}
}

// gatewayMarshaler is apijson as a grpc-gateway Marshaler.
type gatewayMarshaler struct{}

func (gatewayMarshaler) ContentType(any) string { return "application/json" }

func (gatewayMarshaler) Marshal(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		return apijson.Marshal(m)
	}
	return json.Marshal(v)
}

func (gatewayMarshaler) Unmarshal(data []byte, v any) error {
	if m, ok := v.(proto.Message); ok {
		return apijson.Unmarshal(data, m)
	}
	return json.Unmarshal(data, v)
}

func (gatewayMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		if m, ok := v.(proto.Message); ok {
			return apijson.UnmarshalReader(r, m)
		}
		return json.NewDecoder(r).Decode(v)
	})
}

func (g gatewayMarshaler) NewEncoder(w io.Writer) runtime.Encoder {
	return runtime.EncoderFunc(func(v any) error {
		b, err := g.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	})
}

// queryErrRE matches grpc-gateway's query parameter errors, such as
// `parsing field "limit": strconv.ParseInt: parsing "abc": invalid syntax`.
// (Replacing its parser would mean SetQueryParameterParser, which sets a
// package-level variable shared by every mux in the process.)
var queryErrRE = regexp.MustCompile(`^parsing (?:field|list) "([^"]+)": (.*)$`)

// rewordQueryError names the parameter and says what was expected.
func rewordQueryError(msg string) string {
	m := queryErrRE.FindStringSubmatch(msg)
	if m == nil {
		if strings.HasPrefix(msg, "duplicate field") || strings.HasPrefix(msg, "too many values") {
			return "a query parameter is given more than once"
		}
		return msg
	}
	field, detail := m[1], m[2]
	switch {
	case strings.Contains(detail, "ParseInt"), strings.Contains(detail, "ParseUint"):
		if strings.Contains(detail, "out of range") {
			return field + ": integer out of range"
		}
		return field + ": expected an integer"
	case strings.Contains(detail, "ParseBool"):
		return field + ": expected true or false"
	case strings.Contains(detail, "ParseFloat"):
		return field + ": expected a number"
	}
	return field + ": invalid value"
}
