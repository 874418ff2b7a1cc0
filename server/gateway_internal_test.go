package server

import (
	"context"
	"slices"
	"testing"

	"github.com/fullstorydev/grpchan"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors"
)

// TestForwardedOnly: a gateway call carries only the SPEC §4.1 allow-list
// and the gateway's own metadata, whatever grpc-gateway added (it always
// adds x-forwarded-for and x-forwarded-host).
func TestForwardedOnly(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		in   metadata.MD
		want []string
	}{
		{"gateway additions dropped", metadata.Pairs(
			"x-api-key", "kg_x", "authorization", "Bearer kg_x", "x-forwarded-for", "1.2.3.4",
			"x-forwarded-host", "evil", "grpc-timeout", "1n", "x-kgents-internal", "forged",
			interceptors.MDHTTPRoute, "/v1/usage", interceptors.MDHTTPMethod, "GET"),
			[]string{"authorization", "x-api-key", interceptors.MDHTTPMethod, interceptors.MDHTTPRoute}},
		{"allow-list kept", metadata.Pairs("last-event-id", "3", "idempotency-key", "k", "traceparent", "t",
			"tracestate", "s", "x-request-id", "r"),
			[]string{"idempotency-key", "last-event-id", "traceparent", "tracestate", "x-request-id"}},
		{"none", nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			if tc.in != nil {
				ctx = metadata.NewOutgoingContext(ctx, tc.in)
			}
			md, _ := metadata.FromOutgoingContext(forwardedOnly(ctx))
			var got []string
			for k := range md {
				got = append(got, k)
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("keys %v, want %v", got, tc.want)
			}
		})
	}
}

// refusingSoul answers nothing: every call is refused by the interceptor.
type refusingSoul struct {
	soulv1.UnimplementedSoulServiceServer
}

// TestGatewayChannelRefusedStream: a server-streaming call the chain
// refuses before reading its request reaches the gateway as that refusal,
// every time — never as the io.EOF the in-process channel can give the
// request's send when the server has already finished (a 500 on a refused
// SSE request, seen under load).
func TestGatewayChannelRefusedStream(t *testing.T) {
	t.Parallel()
	refuse := func(any, grpc.ServerStream, *grpc.StreamServerInfo, grpc.StreamHandler) error {
		return status.Error(codes.PermissionDenied, "refused")
	}
	ch, reg := newGatewayChannel(noopStats{}, nil, []grpc.StreamServerInterceptor{refuse})
	soulv1.RegisterSoulServiceServer(reg, refusingSoul{})
	client := soulv1.NewSoulServiceClient(grpchan.InterceptClientConn(ch, markReachedUnary, markReachedStream))
	for i := range 300 {
		stream, err := client.StreamDialogue(context.Background(), &soulv1.StreamDialogueRequest{Prompt: "x"})
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("call %d: %v, want the refusal", i, err)
		}
	}
}

// noopStats is a stats handler that records nothing.
type noopStats struct{}

func (noopStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (noopStats) HandleRPC(context.Context, stats.RPCStats)                         {}
func (noopStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (noopStats) HandleConn(context.Context, stats.ConnStats)                       {}
