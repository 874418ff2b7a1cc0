// Package interceptortest runs interceptors in front of a small in-process
// gRPC server, for the interceptor packages' tests: a real grpc.Server on a
// bufconn listener serving kgents.soul.v1.SoulService, whose handlers each
// test supplies, and a real client connection to it. Calls cross grpc-go's
// transport (metadata, headers, trailers, status details, codecs) exactly
// as they do in kgentsd; only the network is in memory.
package interceptortest

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/test/bufconn"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors"
)

// Full method names of the test service.
const (
	Dialogue       = soulv1.SoulService_Dialogue_FullMethodName
	StreamDialogue = soulv1.SoulService_StreamDialogue_FullMethodName
	Governance     = soulv1.SoulService_Governance_FullMethodName
)

// Soul is the test service: each method runs the function a test set, or
// answers an empty reply (a stream: one chunk event) when it is nil.
type Soul struct {
	soulv1.UnimplementedSoulServiceServer
	OnDialogue   func(context.Context, *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error)
	OnStream     func(*soulv1.StreamDialogueRequest, grpc.ServerStreamingServer[soulv1.StreamDialogueResponse]) error
	OnGovernance func(context.Context, *soulv1.GovernanceRequest) (*soulv1.GovernanceResponse, error)
}

// Dialogue implements soulv1.SoulServiceServer.
func (s *Soul) Dialogue(ctx context.Context, req *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
	if s.OnDialogue != nil {
		return s.OnDialogue(ctx, req)
	}
	return &soulv1.DialogueResponse{Response: "ok"}, nil
}

// StreamDialogue implements soulv1.SoulServiceServer.
func (s *Soul) StreamDialogue(req *soulv1.StreamDialogueRequest, ss grpc.ServerStreamingServer[soulv1.StreamDialogueResponse]) error {
	if s.OnStream != nil {
		return s.OnStream(req, ss)
	}
	return ss.Send(&soulv1.StreamDialogueResponse{Id: "1", Event: &soulv1.StreamDialogueResponse_Chunk{Chunk: &soulv1.DialogueChunk{Text: "ok"}}})
}

// Governance implements soulv1.SoulServiceServer.
func (s *Soul) Governance(ctx context.Context, req *soulv1.GovernanceRequest) (*soulv1.GovernanceResponse, error) {
	if s.OnGovernance != nil {
		return s.OnGovernance(ctx, req)
	}
	return &soulv1.GovernanceResponse{}, nil
}

// Chain is what runs in front of the service, outermost first.
type Chain struct {
	Unary  []grpc.UnaryServerInterceptor
	Stream []grpc.StreamServerInterceptor
	// Options are further server options (a codec, say).
	Options []grpc.ServerOption
}

// Add appends an interceptor given in both forms (every interceptor
// package has a Unary and a Stream method).
func (c *Chain) Add(i interface {
	Unary() grpc.UnaryServerInterceptor
	Stream() grpc.StreamServerInterceptor
}) *Chain {
	c.Unary = append(c.Unary, i.Unary())
	c.Stream = append(c.Stream, i.Stream())
	return c
}

// Serve starts the server with chain in front of soul and returns a client
// connection to it; both are closed when the test ends.
func Serve(t testing.TB, soul *Soul, chain Chain) *grpc.ClientConn {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	opts := append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(chain.Unary...),
		grpc.ChainStreamInterceptor(chain.Stream...),
	}, chain.Options...)
	srv := grpc.NewServer(opts...)
	soulv1.RegisterSoulServiceServer(srv, soul)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	cc, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cc.Close()
		srv.Stop()
		<-served
	})
	return cc
}

// ViaGateway makes every call look as if it came through kgentsd's REST
// gateway (its peer address is interceptors.GatewayAddr), as the gateway's
// in-process connection does; it goes outermost in a chain.
func ViaGateway() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	p := &peer.Peer{Addr: interceptors.GatewayAddr{}}
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			return handler(peer.NewContext(ctx, p), req)
		}, func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			return handler(srv, interceptors.WithContext(ss, peer.NewContext(ss.Context(), p)))
		}
}

// Log collects the lines of a slog.JSONHandler; it is safe for concurrent
// writes.
type Log struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// Lines returns the records written so far, decoded.
func (l *Log) Lines(t testing.TB) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(l.buf.Bytes()), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// Find returns the records whose msg is msg.
func (l *Log) Find(t testing.TB, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, m := range l.Lines(t) {
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}
