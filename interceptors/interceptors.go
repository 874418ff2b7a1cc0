// Package interceptors holds what kgentsd's gRPC interceptors share: how a
// call reached the server (natively or through kgentsd's own REST gateway),
// a server stream whose context an interceptor can replace, and the method
// sets that go-grpc-middleware's selector applies an interceptor to. Each concern
// (auth, quota, metering, fan-out, ...) is its own sub-package with a unary
// and a stream interceptor built on one implementation; the order they run in
// is laid out in one place, server/chain.go.
package interceptors

import (
	"context"
	"net"
	"sync"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	mwinterceptors "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// GatewayNetwork is the net.Addr network of connections from kgentsd's own
// REST gateway, which dials the gRPC server in process. Only calls arriving
// on such a connection may carry the gateway's metadata below; a native gRPC
// client cannot forge them because it cannot make its peer address say this.
const GatewayNetwork = "kgents-inproc"

// Metadata keys the gateway sets on the calls it makes.
const (
	MDHTTPRoute  = "x-kgents-http-route"  // route template, e.g. /v1/kgent/sessions/{session_id}
	MDHTTPMethod = "x-kgents-http-method" // GET, POST, DELETE
	// MDClientAddr is the REST client's address (the host of the HTTP
	// connection's remote address).
	MDClientAddr = "x-kgents-client-addr"
)

// CallInfo says how a call reached the server.
type CallInfo struct {
	ViaGateway bool
	// For calls through the gateway: the HTTP method and route template.
	HTTPMethod string
	HTTPRoute  string
}

// InfoFrom reads the call's CallInfo from its context.
func InfoFrom(ctx context.Context) CallInfo {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil || p.Addr.Network() != GatewayNetwork {
		return CallInfo{}
	}
	return CallInfo{
		ViaGateway: true,
		HTTPMethod: FirstValue(ctx, MDHTTPMethod),
		HTTPRoute:  FirstValue(ctx, MDHTTPRoute),
	}
}

// ClientAddr is the caller's network address without its port: the REST
// client's for a call through the gateway, the gRPC peer's otherwise ("" when
// unknown). It is the connection's address, so behind a proxy it is the
// proxy's.
func ClientAddr(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	addr := p.Addr.String()
	if p.Addr.Network() == GatewayNetwork {
		addr = FirstValue(ctx, MDClientAddr)
	}
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// GatewayAddr is the address of the gateway's in-process connections.
type GatewayAddr struct{}

// Network returns GatewayNetwork.
func (GatewayAddr) Network() string { return GatewayNetwork }
func (GatewayAddr) String() string  { return "gateway" }

var _ net.Addr = GatewayAddr{}

// WithContext returns ss with its context replaced by ctx, as
// go-grpc-middleware's WrappedServerStream (embed it to override more).
// Unlike middleware.WrapServerStream it never changes a wrapper that an
// outer interceptor still holds: a wrapped stream is unwrapped and wrapped
// anew, so the outer one keeps seeing its own context.
func WithContext(ss grpc.ServerStream, ctx context.Context) *middleware.WrappedServerStream {
	if w, ok := ss.(*middleware.WrappedServerStream); ok {
		ss = w.ServerStream
	}
	return &middleware.WrappedServerStream{ServerStream: ss, WrappedContext: ctx}
}

// Methods is a set of methods for go-grpc-middleware's selector: an
// interceptor that concerns only some methods is built as
// selector.UnaryServerInterceptor(i, methods) (and the stream form), fed
// from the one policy table in server/methods.go. It looks a call up by
// the service and method CallMeta carries, without building the full name
// again (CallMeta.FullMethod formats a new string on every call).
type Methods struct {
	set map[[2]string]struct{}
}

var _ selector.Matcher = Methods{}

// MethodSet returns the set of fullMethods ("/pkg.Service/Method").
func MethodSet(fullMethods ...string) Methods {
	m := Methods{set: make(map[[2]string]struct{}, len(fullMethods))}
	for _, fm := range fullMethods {
		m.set[splitMethod(fm)] = struct{}{}
	}
	return m
}

// Match implements selector.Matcher.
func (m Methods) Match(_ context.Context, c mwinterceptors.CallMeta) bool {
	_, ok := m.set[[2]string{c.Service, c.Method}]
	return ok
}

// Has reports whether fullMethod is in the set.
func (m Methods) Has(fullMethod string) bool {
	_, ok := m.set[splitMethod(fullMethod)]
	return ok
}

// splitMethod splits "/pkg.Service/Method" as CallMeta does.
func splitMethod(fullMethod string) [2]string {
	c := mwinterceptors.NewServerCallMeta(fullMethod, nil, nil)
	return [2]string{c.Service, c.Method}
}

// FullMethod is c.FullMethod() without formatting a new string on every
// call: the names are kept once per method. Only registered methods reach
// the interceptors (grpc-go answers Unimplemented before them), so the cache
// is bounded by the services' methods.
func FullMethod(c mwinterceptors.CallMeta) string {
	key := [2]string{c.Service, c.Method}
	if v, ok := fullMethods.Load(key); ok {
		return v.(string)
	}
	v, _ := fullMethods.LoadOrStore(key, c.FullMethod())
	return v.(string)
}

var fullMethods sync.Map // [2]string → string

// FirstValue returns the first value of an incoming metadata key (lower
// case) in ctx, or "". Unlike metadata.FromIncomingContext it does not copy
// the whole metadata, which matters on every call of every interceptor.
func FirstValue(ctx context.Context, key string) string {
	if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// Tags are facts about a call that inner interceptors learn and outer ones
// report: the logging interceptor creates them, auth fills in who called.
// They are written before the handler runs and read after it returns, on the
// call's own goroutine.
type Tags struct {
	TenantID string
	KeyID    string
	// SessionID is the session a session-scoped call concerns (the fan-out
	// interceptor sets it once the request is read).
	SessionID string
	// UsageID is what the call's usage events are billed under when it
	// carries an Idempotency-Key the idempotency interceptor honours: a
	// fresh id for a run that claimed the key, the stored run's id for a
	// replay (so the replay is billed once). Empty otherwise.
	UsageID string
}

type tagsKey struct{}

// WithTags returns ctx carrying t.
func WithTags(ctx context.Context, t *Tags) context.Context {
	return context.WithValue(ctx, tagsKey{}, t)
}

// TagsFrom returns the call's tags, or nil.
func TagsFrom(ctx context.Context) *Tags {
	t, _ := ctx.Value(tagsKey{}).(*Tags)
	return t
}

// MDStreamOpen marks a server stream's headers as its opening: every check
// has passed and events follow. The REST layer answers 200 and starts the
// event stream only then; headers without it (rate-limit headers sent along
// with a refusal) mean nothing has opened yet.
const MDStreamOpen = "x-kgents-stream"

// OpenStream sends a stream's headers with the opening mark.
func OpenStream(ss grpc.ServerStream) error {
	return ss.SendHeader(metadata.Pairs(MDStreamOpen, "open"))
}

// HTTPStatus maps a gRPC code to the REST status of SPEC §4.1. It departs
// from grpc-gateway's table in one place: FailedPrecondition (a closed
// session, a turn already running) is a 409 conflict, not a 400.
func HTTPStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return 200
	case codes.Canceled:
		return 499 // client closed request
	case codes.InvalidArgument, codes.OutOfRange:
		return 400
	case codes.Unauthenticated:
		return 401
	case codes.PermissionDenied:
		return 403
	case codes.NotFound:
		return 404
	case codes.AlreadyExists, codes.Aborted, codes.FailedPrecondition:
		return 409
	case codes.ResourceExhausted:
		return 429
	case codes.Unimplemented:
		return 501
	case codes.Unavailable:
		return 503
	case codes.DeadlineExceeded:
		return 504
	default:
		return 500
	}
}
