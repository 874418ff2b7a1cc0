// Package interceptors holds what kgentsd's gRPC interceptors share: how a
// call reached the server (natively or through kgentsd's own REST gateway),
// and a server stream whose context an interceptor can replace. Each concern
// (auth, quota, metering, fan-out, ...) is its own sub-package with a unary
// and a stream interceptor built on one implementation; the order they run in
// is laid out in one place, server/chain.go.
package interceptors

import (
	"context"
	"net"

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

// GatewayAddr is the address of the gateway's in-process connections.
type GatewayAddr struct{}

// Network returns GatewayNetwork.
func (GatewayAddr) Network() string { return GatewayNetwork }
func (GatewayAddr) String() string  { return "gateway" }

var _ net.Addr = GatewayAddr{}

// ServerStream is a grpc.ServerStream with a replaced context.
type ServerStream struct {
	grpc.ServerStream
	Ctx context.Context
}

// Context returns the replaced context.
func (s *ServerStream) Context() context.Context { return s.Ctx }

// WithContext wraps ss so that Context returns ctx.
func WithContext(ss grpc.ServerStream, ctx context.Context) grpc.ServerStream {
	if w, ok := ss.(*ServerStream); ok {
		return &ServerStream{ServerStream: w.ServerStream, Ctx: ctx}
	}
	return &ServerStream{ServerStream: ss, Ctx: ctx}
}

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
