package server

import (
	"context"

	"github.com/fullstorydev/grpchan"
	"github.com/fullstorydev/grpchan/inprocgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kgents/kgents-go/interceptors"
)

// The REST gateway reaches the services through an in-process channel
// (grpchan's inprocgrpc) rather than a connection to the gRPC server: a
// call is a function call on its own goroutine, with the request and
// response copied (proto.Clone) instead of encoded, framed, flow-controlled
// and decoded twice. It runs the very same interceptor chain and stats
// handler as the gRPC server (chain.go), so SPEC §2's "one chain for both
// surfaces" holds: metadata in (the client context's outgoing metadata
// becomes the server's incoming), headers and trailers out, streaming both
// ways, and cancellation when the HTTP client goes away (the server context
// is a child of the client's, without its values).
//
// Calls on it carry the peer address interceptors.GatewayAddr, set by the
// first interceptor below. A native gRPC client cannot present it (its peer
// is its TCP address), which is how the chain knows a call came from the
// gateway and may trust its route metadata.
//
// Measured against the previous design (the gateway dialling the gRPC
// server over an in-process socketpair with full HTTP/2 and protobuf both
// ways): docs/benchmarks.md, "REST without the second hop".
func newGatewayChannel(sh stats.Handler, unary []grpc.UnaryServerInterceptor, stream []grpc.StreamServerInterceptor) (*inprocgrpc.Channel, grpc.ServiceRegistrar) {
	ch := new(inprocgrpc.Channel).WithServerStatsHandler(sh).WithCloner(protoCloner{})
	unary = append([]grpc.UnaryServerInterceptor{gatewayPeerUnary}, unary...)
	stream = append([]grpc.StreamServerInterceptor{gatewayPeerStream}, stream...)
	reg := grpchan.WithStreamInterceptors(grpchan.WithUnaryInterceptors(ch, unary...), stream...)
	return ch, reg
}

// gatewayPeer is the peer of every call through the gateway's channel.
var gatewayPeer = &peer.Peer{Addr: interceptors.GatewayAddr{}, LocalAddr: interceptors.GatewayAddr{}}

func gatewayPeerUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(peer.NewContext(ctx, gatewayPeer), req)
}

func gatewayPeerStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, interceptors.WithContext(ss, peer.NewContext(ss.Context(), gatewayPeer)))
}

// protoCloner copies messages between the gateway and the services with
// the protobuf runtime itself (grpchan's default goes through the older
// golang/protobuf and jhump/protoreflect APIs). Request and response are
// always the method's own types.
type protoCloner struct{}

func (protoCloner) Copy(out, in any) error {
	o, ok1 := out.(proto.Message)
	i, ok2 := in.(proto.Message)
	if !ok1 || !ok2 || o.ProtoReflect().Descriptor() != i.ProtoReflect().Descriptor() {
		return status.Errorf(codes.Internal, "in-process call: cannot copy %T into %T", in, out)
	}
	proto.Reset(o)
	proto.Merge(o, i)
	return nil
}

func (protoCloner) Clone(in any) (any, error) {
	m, ok := in.(proto.Message)
	if !ok {
		return nil, status.Errorf(codes.Internal, "in-process call: cannot copy %T", in)
	}
	return proto.Clone(m), nil
}
