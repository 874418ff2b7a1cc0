package interceptors_test

import (
	"context"
	"sync"
	"testing"

	mwinterceptors "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/interceptortest"
)

func TestMethodSet(t *testing.T) {
	t.Parallel()
	set := interceptors.MethodSet(interceptortest.Dialogue, interceptortest.StreamDialogue)
	for _, tc := range []struct {
		method string
		want   bool
	}{
		{interceptortest.Dialogue, true},
		{interceptortest.StreamDialogue, true},
		{interceptortest.Governance, false},
		{"/kgents.soul.v1.OtherService/Dialogue", false},
		{"/kgents.soul.v1.SoulService/Dialogue/extra", false},
		{"", false},
	} {
		meta := mwinterceptors.NewServerCallMeta(tc.method, nil, nil)
		if got := set.Match(context.Background(), meta); got != tc.want {
			t.Errorf("Match(%q) = %v, want %v", tc.method, got, tc.want)
		}
		if got := set.Has(tc.method); got != tc.want {
			t.Errorf("Has(%q) = %v, want %v", tc.method, got, tc.want)
		}
	}
	if (interceptors.Methods{}).Match(context.Background(), mwinterceptors.NewServerCallMeta(interceptortest.Dialogue, nil, nil)) {
		t.Error("the empty set matched")
	}
}

// FullMethod names each method as CallMeta.FullMethod does, the first time
// and from its cache, and allocates nothing once a method is known.
func TestFullMethod(t *testing.T) {
	for _, m := range []string{interceptortest.Dialogue, interceptortest.StreamDialogue, interceptortest.Dialogue} {
		meta := mwinterceptors.NewServerCallMeta(m, nil, nil)
		if got := interceptors.FullMethod(meta); got != m || got != meta.FullMethod() {
			t.Errorf("FullMethod(%q) = %q", m, got)
		}
	}
	meta := mwinterceptors.NewServerCallMeta(interceptortest.Dialogue, nil, nil)
	if n := testing.AllocsPerRun(100, func() { _ = interceptors.FullMethod(meta) }); n != 0 {
		t.Errorf("a known method's name allocates %v times", n)
	}
}

// TestSelectorAppliesToTheListedMethods: an interceptor put behind
// selector with a MethodSet runs for those methods only, unary and stream.
func TestSelectorAppliesToTheListedMethods(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var seen []string
	note := func(m string) { mu.Lock(); seen = append(seen, m); mu.Unlock() }
	set := interceptors.MethodSet(interceptortest.Dialogue, interceptortest.StreamDialogue)
	chain := interceptortest.Chain{
		Unary: []grpc.UnaryServerInterceptor{selector.UnaryServerInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			note(info.FullMethod)
			return h(ctx, req)
		}, set)},
		Stream: []grpc.StreamServerInterceptor{selector.StreamServerInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			note(info.FullMethod)
			return h(srv, ss)
		}, set)},
	}
	client := soulv1.NewSoulServiceClient(interceptortest.Serve(t, &interceptortest.Soul{}, chain))
	ctx := context.Background()
	if _, err := client.Dialogue(ctx, &soulv1.DialogueRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Governance(ctx, &soulv1.GovernanceRequest{}); err != nil {
		t.Fatal(err)
	}
	st, err := client.StreamDialogue(ctx, &soulv1.StreamDialogueRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for err == nil {
		_, err = st.Recv()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0] != interceptortest.Dialogue || seen[1] != interceptortest.StreamDialogue {
		t.Errorf("the interceptor ran for %v", seen)
	}
}

type ctxKey string

// TestWithContextLeavesOuterWrappersAlone: replacing the context of a
// stream an outer interceptor wrapped gives a new wrapper; the outer one
// keeps its context (go-grpc-middleware's WrapServerStream would reuse and
// change it).
func TestWithContextLeavesOuterWrappersAlone(t *testing.T) {
	t.Parallel()
	var inner, outer context.Context
	chain := interceptortest.Chain{Stream: []grpc.StreamServerInterceptor{
		func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			w := interceptors.WithContext(ss, context.WithValue(ss.Context(), ctxKey("who"), "outer"))
			err := h(srv, w)
			outer = w.Context() // after the inner interceptor replaced its own
			return err
		},
		func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			w := interceptors.WithContext(ss, context.WithValue(ss.Context(), ctxKey("who"), "inner"))
			if w == ss {
				t.Error("the outer wrapper was reused")
			}
			return h(srv, w)
		},
	}}
	soul := &interceptortest.Soul{OnStream: func(_ *soulv1.StreamDialogueRequest, ss grpc.ServerStreamingServer[soulv1.StreamDialogueResponse]) error {
		inner = ss.Context()
		return ss.Send(&soulv1.StreamDialogueResponse{Id: "1"}) // sends still reach the caller
	}}
	client := soulv1.NewSoulServiceClient(interceptortest.Serve(t, soul, chain))
	st, err := client.StreamDialogue(context.Background(), &soulv1.StreamDialogueRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := st.Recv()
	if err != nil || ev.GetId() != "1" {
		t.Fatalf("event %v %v", ev, err)
	}
	for err == nil {
		_, err = st.Recv()
	}
	if inner.Value(ctxKey("who")) != "inner" {
		t.Errorf("handler saw %v", inner.Value(ctxKey("who")))
	}
	if outer.Value(ctxKey("who")) != "outer" {
		t.Errorf("the outer wrapper's context became %v", outer.Value(ctxKey("who")))
	}
}
