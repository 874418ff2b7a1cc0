package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/kgents/kgents-go/apijson"
	adminv1 "github.com/kgents/kgents-go/gen/kgents/admin/v1"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	tenantsv1 "github.com/kgents/kgents-go/gen/kgents/tenants/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/auth"
	"github.com/kgents/kgents-go/interceptors/validate"
)

// callState is what the HTTP layer learns about one request as it passes
// through the middleware, the gateway and the gRPC client: its route
// template, whether the gRPC call was made, whether the body was too large.
type callState struct {
	requestID string
	// badURL: the URL's path or query is not UTF-8 once unescaped (set
	// before any handler runs).
	badURL       bool
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
// could not parse, say). It is also the last word on what the call carries:
// only the allow-listed metadata leave (see forwardedOnly), and a request
// with a string that is not UTF-8 (which only a URL can give it: bodies are
// decoded to valid UTF-8) is refused before the call, as the gateway's own
// error.
func markReachedUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if s := callStateFrom(ctx); s != nil {
		if s.badURL {
			if err := checkUTF8(req); err != nil {
				return err
			}
		}
		s.reached.Store(true)
	}
	return invoker(forwardedOnly(ctx), method, req, reply, cc, opts...)
}

func markReachedStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if s := callStateFrom(ctx); s != nil {
		s.reached.Store(true)
	}
	cs, err := streamer(forwardedOnly(ctx), desc, cc, method, opts...)
	if err != nil || desc.ClientStreams {
		return cs, err
	}
	return oneRequestStream{cs}, nil
}

// oneRequestStream is a server-streaming call's client side as grpc-go
// gives it: sending its one request never fails with io.EOF (the server
// may have finished already, refusing the call before reading it); the
// call's status comes from RecvMsg. The in-process channel would hand the
// io.EOF to the generated client, which returns it as the call's error.
type oneRequestStream struct{ grpc.ClientStream }

func (s oneRequestStream) SendMsg(m any) error {
	if err := s.ClientStream.SendMsg(m); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
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

// forwardedMetadata is every metadata key a gateway call may carry: the
// allow-listed headers, authorization, and what the gateway itself sets.
// grpc-gateway adds x-forwarded-for and x-forwarded-host to every call on its
// own; they are dropped here with anything else.
var forwardedMetadata = func() map[string]bool {
	m := map[string]bool{
		"authorization":           true,
		interceptors.MDHTTPRoute:  true,
		interceptors.MDHTTPMethod: true,
		interceptors.MDClientAddr: true,
		validate.MDRefused:        true,
	}
	for _, k := range incomingHeaders {
		m[k] = true
	}
	return m
}()

// forwardedOnly returns ctx with its outgoing metadata cut to
// forwardedMetadata.
func forwardedOnly(ctx context.Context) context.Context {
	md, ok := metadata.FromOutgoingContext(ctx)
	if !ok {
		return ctx
	}
	clean := true
	for k := range md {
		if !forwardedMetadata[k] {
			clean = false
			break
		}
	}
	if clean {
		return ctx
	}
	for k := range md { // md is FromOutgoingContext's copy: ours to cut
		if !forwardedMetadata[k] {
			delete(md, k)
		}
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// grpcControlHeaders drops the request headers grpc-gateway would act on
// itself: Grpc-Timeout (which it turns into the call's deadline, so a client
// could cut its own REST calls short while the work is done and billed)
// and any other Grpc-* header. None is on the SPEC §4.1 allow-list.
func grpcControlHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k := range r.Header {
			if len(k) >= 5 && strings.EqualFold(k[:5], "grpc-") {
				delete(r.Header, k)
			}
		}
		next.ServeHTTP(w, r)
	})
}

// urlNotUTF8 reports whether u's path or query is not UTF-8 once unescaped.
func urlNotUTF8(u *url.URL) bool {
	if !utf8.ValidString(u.Path) || !utf8.ValidString(u.RawQuery) {
		return true
	}
	if q := u.RawQuery; strings.IndexByte(q, '%') >= 0 {
		if unq, err := url.QueryUnescape(q); err == nil && !utf8.ValidString(unq) {
			return true
		}
	}
	return false
}

// checkUTF8 is an InvalidArgument naming the first string field of req that
// is not UTF-8, or nil.
func checkUTF8(req any) error {
	m, ok := req.(proto.Message)
	if !ok {
		return nil
	}
	if field := notUTF8Field(m.ProtoReflect(), "", 0); field != "" {
		return status.Error(codes.InvalidArgument, field+": not valid UTF-8")
	}
	return nil
}

func notUTF8Field(m protoreflect.Message, prefix string, depth int) string {
	if depth > 32 {
		return ""
	}
	var found string
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := prefix + string(fd.Name())
		bad := func(v protoreflect.Value, kind protoreflect.Kind) string {
			switch kind {
			case protoreflect.StringKind:
				if !utf8.ValidString(v.String()) {
					return name
				}
			case protoreflect.MessageKind, protoreflect.GroupKind:
				return notUTF8Field(v.Message(), name+".", depth+1)
			}
			return ""
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len() && found == ""; i++ {
				found = bad(l.Get(i), fd.Kind())
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if !utf8.ValidString(k.String()) {
					found = name
				} else if f := bad(mv, fd.MapValue().Kind()); f != "" {
					found = f
				}
				return found == ""
			})
		default:
			found = bad(v, fd.Kind())
		}
		return found == ""
	})
	return found
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
		runtime.WithMarshalerOption(runtime.MIMEWildcard, gatewayMarshaler{required: requiredBodyFields()}),
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
// and the client's address (trusted only on the in-process connection, see
// interceptors.InfoFrom and interceptors.ClientAddr).
func gatewayMetadata(ctx context.Context, r *http.Request) metadata.MD {
	route, _ := runtime.HTTPPathPattern(ctx)
	if st := callStateFrom(ctx); st != nil && route != "" {
		st.setRoute(route)
	}
	return metadata.Pairs(interceptors.MDHTTPRoute, route, interceptors.MDHTTPMethod, r.Method,
		interceptors.MDClientAddr, r.RemoteAddr)
}

// gatewayError writes a failed unary call.
func (s *Server) gatewayError(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	st := callStateFrom(r.Context())
	if st != nil && !st.reached.Load() {
		rpc, _ := runtime.RPCMethod(ctx)
		s.writePreCallError(ctx, w, r, rpc, err)
		return
	}
	if md, ok := runtime.ServerMetadataFromContext(ctx); ok {
		copyMetadataHeaders(w.Header(), md.HeaderMD, md.TrailerMD)
	}
	writeError(w, status.Convert(err), requestIDOf(r))
}

// writePreCallError answers a request that failed before its gRPC call was
// made: its body, query or path could not be read into the request of rpc.
//
// Such a request is the caller's error (400), and is treated like every
// other: it is sent to rpc anyway, as a call with an empty request marked
// with the reason (validate.MDRefused), which the chain authenticates (SPEC
// §4.1: a missing or unknown key is 401 even when the body does not parse),
// meters, rate-limits and then refuses with InvalidArgument and the reason.
//
// A body over the size limit is answered here, after the same key check,
// with 413 (ctx is the call's annotated context; rpc "" when unknown).
func (s *Server) writePreCallError(ctx context.Context, w http.ResponseWriter, r *http.Request, rpc string, err error) {
	reason, input := inputError(err)
	tooLarge := isMaxBytes(err)
	if st := callStateFrom(r.Context()); st != nil && st.bodyTooLarge.Load() {
		tooLarge = true
	}
	if input && !tooLarge && rpc != "" {
		s.refuse(ctx, w, r, rpc, reason)
		return
	}
	if _, aerr := s.authn.Authenticate(auth.KeyFromHTTP(r.Header)); aerr != nil {
		writeJSONError(w, http.StatusUnauthorized, codes.Unauthenticated, aerr.Error())
		return
	}
	switch {
	case tooLarge:
		writeJSONError(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument,
			fmt.Sprintf("request body too large (limit %d bytes)", s.cfg.HTTP.MaxBodyBytes))
	case input:
		writeJSONError(w, http.StatusBadRequest, codes.InvalidArgument, reason)
	default:
		writeError(w, status.Convert(err), requestIDOf(r))
	}
}

// inputError is the caller-facing reason of an error reading the request,
// and whether err is one.
func inputError(err error) (string, bool) {
	var de *apijson.DecodeError
	if errors.As(err, &de) {
		return de.Error(), true
	}
	// grpc-gateway wraps our decoder's errors in a status; its text is ours.
	// Its own query-parameter errors carry strconv's text: reword those.
	if st, ok := status.FromError(err); ok && st.Code() == codes.InvalidArgument {
		return rewordQueryError(st.Message()), true
	}
	return "", false
}

// refuse sends a request the HTTP layer could not read through the chain as
// a refused call of rpc (see writePreCallError) and writes its answer.
func (s *Server) refuse(ctx context.Context, w http.ResponseWriter, r *http.Request, rpc, reason string) {
	// The call will not run, so its Idempotency-Key has nothing to keep
	// (and must not be compared with the empty request sent).
	md, ok := metadata.FromOutgoingContext(ctx) // a copy
	if !ok {
		md = metadata.MD{}
	}
	delete(md, "idempotency-key")
	md.Set(validate.MDRefused, reason)
	ctx = metadata.NewOutgoingContext(ctx, md)
	var header, trailer metadata.MD
	req, resp, streaming, err := methodMessages(rpc)
	switch {
	case err != nil:
	case streaming:
		err = s.refuseStream(ctx, rpc, req, resp, &header, &trailer)
	default:
		err = s.gwConn.Invoke(ctx, rpc, req, resp, grpc.Header(&header), grpc.Trailer(&trailer))
	}
	if err == nil {
		// The validate interceptor refuses every marked call; never
		// answer 200 to a request that was not read.
		err = status.Error(codes.InvalidArgument, reason)
	}
	copyMetadataHeaders(w.Header(), header, trailer)
	writeError(w, status.Convert(err), requestIDOf(r))
}

// refuseStream is refuse's call for a server-streaming method: the chain
// refuses it before the handler runs, so the stream ends with that error.
func (s *Server) refuseStream(ctx context.Context, rpc string, req, resp proto.Message, header, trailer *metadata.MD) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := s.gwConn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, rpc)
	if err != nil {
		return err
	}
	if err := cs.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := cs.CloseSend(); err != nil {
		return err
	}
	err = cs.RecvMsg(resp)
	*header, _ = cs.Header()
	*trailer = cs.Trailer()
	return err
}

// methodMessages returns an empty request and response of a full method
// name ("/pkg.Svc/M"), and whether the server streams its answer.
func methodMessages(fullMethod string) (req, resp proto.Message, streaming bool, err error) {
	name := strings.Replace(strings.TrimPrefix(fullMethod, "/"), "/", ".", 1)
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return nil, nil, false, status.Errorf(codes.Unimplemented, "unknown method %s", fullMethod)
	}
	md, ok := d.(protoreflect.MethodDescriptor)
	if !ok {
		return nil, nil, false, status.Errorf(codes.Unimplemented, "unknown method %s", fullMethod)
	}
	in, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		return nil, nil, false, status.Errorf(codes.Internal, "no type for %s", md.Input().FullName())
	}
	out, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return nil, nil, false, status.Errorf(codes.Internal, "no type for %s", md.Output().FullName())
	}
	return in.New().Interface(), out.New().Interface(), md.IsStreamingServer(), nil
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
type gatewayMarshaler struct {
	required map[protoreflect.FullName][]protoreflect.Name
}

func (gatewayMarshaler) ContentType(any) string { return "application/json" }

func (gatewayMarshaler) Marshal(v any) ([]byte, error) {
	if m, ok := v.(proto.Message); ok {
		return apijson.Marshal(m)
	}
	return json.Marshal(v)
}

func (g gatewayMarshaler) options(m proto.Message) apijson.UnmarshalOptions {
	return apijson.UnmarshalOptions{Required: g.required[m.ProtoReflect().Descriptor().FullName()]}
}

func (g gatewayMarshaler) Unmarshal(data []byte, v any) error {
	if m, ok := v.(proto.Message); ok {
		return g.options(m).Unmarshal(data, m)
	}
	return json.Unmarshal(data, v)
}

func (g gatewayMarshaler) NewDecoder(r io.Reader) runtime.Decoder {
	return runtime.DecoderFunc(func(v any) error {
		if m, ok := v.(proto.Message); ok {
			return g.options(m).UnmarshalReader(r, m)
		}
		return json.NewDecoder(r).Decode(v)
	})
}

// restFiles declare the services served over REST.
var restFiles = []protoreflect.FileDescriptor{
	sessionsv1.File_kgents_sessions_v1_sessions_proto,
	soulv1.File_kgents_soul_v1_soul_proto,
	agentesev1.File_kgents_agentese_v1_agentese_proto,
	usagev1.File_kgents_usage_v1_usage_proto,
	tenantsv1.File_kgents_tenants_v1_tenants_proto,
	adminv1.File_kgents_admin_v1_admin_proto,
}

// requiredBodyFields lists, by request message, the fields a REST body must
// give: those the .proto marks (google.api.field_behavior) = REQUIRED,
// except the ones the route binds from its URL path. Proto3 cannot tell a
// string left out from an empty one, so this is checked on the JSON
// (apijson.UnmarshalOptions); over native gRPC a field left out is empty.
func requiredBodyFields() map[protoreflect.FullName][]protoreflect.Name {
	out := map[protoreflect.FullName][]protoreflect.Name{}
	for _, fd := range restFiles {
		for i := 0; i < fd.Services().Len(); i++ {
			methods := fd.Services().Get(i).Methods()
			for j := 0; j < methods.Len(); j++ {
				md := methods.Get(j)
				if req := bodyRequired(md); len(req) > 0 {
					out[md.Input().FullName()] = req
				}
			}
		}
	}
	return out
}

// bodyRequired is requiredBodyFields for one method (nil for a method whose
// request is not read from a body).
func bodyRequired(md protoreflect.MethodDescriptor) []protoreflect.Name {
	rule, _ := proto.GetExtension(md.Options(), annotations.E_Http).(*annotations.HttpRule)
	if rule.GetBody() != "*" {
		return nil
	}
	pattern := rule.GetPost() + rule.GetPut() + rule.GetPatch() + rule.GetDelete() + rule.GetGet()
	var req []protoreflect.Name
	fields := md.Input().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		behaviors, _ := proto.GetExtension(f.Options(), annotations.E_FieldBehavior).([]annotations.FieldBehavior)
		if !slices.Contains(behaviors, annotations.FieldBehavior_REQUIRED) {
			continue
		}
		if strings.Contains(pattern, "{"+string(f.Name())+"}") || strings.Contains(pattern, "{"+string(f.Name())+"=") {
			continue // from the path
		}
		req = append(req, f.Name())
	}
	return req
}

// bodyRequiredFor is bodyRequired for a full method name ("/pkg.Svc/M").
func bodyRequiredFor(fullMethod string) []protoreflect.Name {
	name := strings.Replace(strings.TrimPrefix(fullMethod, "/"), "/", ".", 1)
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return nil
	}
	md, _ := d.(protoreflect.MethodDescriptor)
	if md == nil {
		return nil
	}
	return bodyRequired(md)
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
