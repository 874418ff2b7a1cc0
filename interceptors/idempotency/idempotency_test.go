package idempotency_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/interceptors/idempotency"
	"github.com/kgents/kgents-go/streaming/natstest"
	"github.com/kgents/kgents-go/tenancy"
)

const createMethod = "/kgents.sessions.v1.SessionsService/CreateSession"
const streamMethod = "/kgents.sessions.v1.SessionsService/StreamMessage"

func stores(t *testing.T) map[string]func(t *testing.T) idempotency.Store {
	return map[string]func(t *testing.T) idempotency.Store{
		"memory": func(*testing.T) idempotency.Store { return idempotency.NewMemory(24 * time.Hour) },
		"jetstream": func(t *testing.T) idempotency.Store {
			srv := natstest.Start(t)
			_, js := srv.Connect(t)
			return idempotency.NewJetStream(js, 1, 24*time.Hour)
		},
	}
}

func callCtx(tenant, key string) context.Context {
	ctx := tenancy.WithIdentity(context.Background(), &tenancy.Identity{TenantID: tenant})
	if key != "" {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("idempotency-key", key))
	}
	return grpc.NewContextWithServerTransportStream(ctx, &fakeTransport{})
}

// fakeTransport lets grpc.SetHeader work outside a real server.
type fakeTransport struct{ header metadata.MD }

func (f *fakeTransport) Method() string { return createMethod }
func (f *fakeTransport) SetHeader(md metadata.MD) error {
	f.header = metadata.Join(f.header, md)
	return nil
}
func (f *fakeTransport) SendHeader(md metadata.MD) error { return f.SetHeader(md) }
func (f *fakeTransport) SetTrailer(metadata.MD) error    { return nil }

func TestUnary(t *testing.T) {
	t.Parallel()
	for name, mk := range stores(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ic := idempotency.New(mk(t), []string{createMethod}, time.Minute, slog.Default()).Unary()
			info := &grpc.UnaryServerInfo{FullMethod: createMethod}
			var runs atomic.Int32
			handler := func(_ context.Context, req any) (any, error) {
				n := runs.Add(1)
				return &sessionsv1.CreateSessionResponse{Session: &sessionsv1.Session{Id: "s", MessageCount: n, Title: req.(*sessionsv1.CreateSessionRequest).Title}}, nil
			}
			req := &sessionsv1.CreateSessionRequest{Title: proto.String("a")}

			first, err := ic(callCtx("t1", "k1"), req, info, handler)
			if err != nil {
				t.Fatal(err)
			}
			ctx := callCtx("t1", "k1")
			again, err := ic(ctx, req, info, handler)
			if err != nil {
				t.Fatal(err)
			}
			if runs.Load() != 1 || !proto.Equal(first.(proto.Message), again.(proto.Message)) {
				t.Errorf("repeat ran %d times, replay %v vs %v", runs.Load(), again, first)
			}
			if tr := grpc.ServerTransportStreamFromContext(ctx).(*fakeTransport); tr.header.Get(idempotency.ReplayHeader)[0] != "true" {
				t.Errorf("replay header missing: %v", tr.header)
			}
			// Same key, different body: conflict.
			_, err = ic(callCtx("t1", "k1"), &sessionsv1.CreateSessionRequest{Title: proto.String("b")}, info, handler)
			if status.Code(err) != codes.AlreadyExists {
				t.Errorf("different body: %v, want AlreadyExists", err)
			}
			// Keys are per tenant, and no key means no idempotency.
			if _, err := ic(callCtx("t2", "k1"), req, info, handler); err != nil || runs.Load() != 2 {
				t.Errorf("other tenant: %v runs %d", err, runs.Load())
			}
			if _, err := ic(callCtx("t1", ""), req, info, handler); err != nil || runs.Load() != 3 {
				t.Errorf("no key: %v runs %d", err, runs.Load())
			}
			// A failure keeps nothing: the retry runs.
			fail := func(context.Context, any) (any, error) { return nil, status.Error(codes.Unavailable, "down") }
			if _, err := ic(callCtx("t1", "k2"), req, info, fail); status.Code(err) != codes.Unavailable {
				t.Fatal(err)
			}
			if _, err := ic(callCtx("t1", "k2"), req, info, handler); err != nil || runs.Load() != 4 {
				t.Errorf("retry after failure: %v runs %d", err, runs.Load())
			}
			// A repeat while the first runs: conflict.
			started, release := make(chan struct{}), make(chan struct{})
			slow := func(ctx context.Context, r any) (any, error) {
				close(started)
				<-release
				return handler(ctx, r)
			}
			done := make(chan error)
			go func() {
				_, err := ic(callCtx("t1", "k3"), req, info, slow)
				done <- err
			}()
			<-started
			if _, err := ic(callCtx("t1", "k3"), req, info, handler); status.Code(err) != codes.Aborted {
				t.Errorf("repeat while running: %v, want Aborted", err)
			}
			close(release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			// Bad keys.
			long := make([]byte, 300)
			for i := range long {
				long[i] = 'k'
			}
			for _, bad := range []string{string(long), "has space"} {
				if _, err := ic(callCtx("t1", bad), req, info, handler); status.Code(err) != codes.InvalidArgument {
					t.Errorf("key %q...: %v, want InvalidArgument", bad[:5], err)
				}
			}
		})
	}
}

// serverStream feeds one request and records what is sent.
type serverStream struct {
	grpc.ServerStream
	ctx     context.Context
	req     proto.Message
	read    bool
	header  metadata.MD
	sent    []proto.Message
	sendErr error
}

func (s *serverStream) Context() context.Context { return s.ctx }
func (s *serverStream) RecvMsg(m any) error {
	if s.read {
		return io.EOF
	}
	s.read = true
	proto.Merge(m.(proto.Message), s.req)
	return nil
}
func (s *serverStream) SendMsg(m any) error {
	if s.sendErr != nil {
		return s.sendErr
	}
	s.sent = append(s.sent, proto.Clone(m.(proto.Message)))
	return nil
}
func (s *serverStream) SendHeader(md metadata.MD) error { s.header = md; return nil }
func (s *serverStream) SetHeader(md metadata.MD) error  { return nil }
func (s *serverStream) SetTrailer(metadata.MD)          {}

func TestStreamReplayAndCallerGone(t *testing.T) {
	t.Parallel()
	ic := idempotency.New(idempotency.NewMemory(time.Hour), []string{streamMethod}, time.Minute, slog.Default()).Stream()
	info := &grpc.StreamServerInfo{FullMethod: streamMethod, IsServerStream: true}
	var runs atomic.Int32
	handler := func(_ any, ss grpc.ServerStream) error {
		runs.Add(1)
		req := &sessionsv1.StreamMessageRequest{}
		if err := ss.RecvMsg(req); err != nil {
			return err
		}
		var sendErr error
		for _, id := range []string{"1", "2", "3"} {
			err := ss.SendMsg(&sessionsv1.StreamMessageResponse{Event: &sessionsv1.SessionEvent{Id: id, SessionId: req.GetSessionId()}})
			if sendErr == nil {
				sendErr = err
			}
		}
		if sendErr != nil {
			return status.Error(codes.Canceled, "caller gone")
		}
		return nil
	}
	req := &sessionsv1.StreamMessageRequest{SessionId: "s1", Message: "hi"}

	// The first caller leaves after the stream starts; the work completes.
	gone := &serverStream{ctx: callCtx("t", "k"), req: req, sendErr: errors.New("transport closed")}
	if err := ic(nil, gone, info, handler); status.Code(err) != codes.Canceled {
		t.Fatalf("first call: %v", err)
	}
	// Its retry replays all three events without running again.
	retry := &serverStream{ctx: callCtx("t", "k"), req: req}
	if err := ic(nil, retry, info, handler); err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 1 || len(retry.sent) != 3 || retry.sent[2].(*sessionsv1.StreamMessageResponse).GetEvent().GetId() != "3" {
		t.Fatalf("retry: runs %d sent %v", runs.Load(), retry.sent)
	}
	if retry.header.Get(idempotency.ReplayHeader)[0] != "true" {
		t.Errorf("replay header: %v", retry.header)
	}
	// The handler still gets its request when there is no key.
	plain := &serverStream{ctx: callCtx("t", ""), req: req}
	if err := ic(nil, plain, info, handler); err != nil || len(plain.sent) != 3 || runs.Load() != 2 {
		t.Errorf("no key: %v sent %d runs %d", err, len(plain.sent), runs.Load())
	}
}

func TestStaleRunningEntryIsTakenOver(t *testing.T) {
	t.Parallel()
	for name, mk := range stores(t) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := mk(t)
			ctx := context.Background()
			old := idempotency.Entry{RequestHash: "h", Started: time.Now().Add(-time.Hour)}
			if _, claimed, err := s.Claim(ctx, "k", old, time.Minute); err != nil || !claimed {
				t.Fatalf("first claim: %v %v", claimed, err)
			}
			if _, claimed, err := s.Claim(ctx, "k", idempotency.Entry{RequestHash: "h", Started: time.Now()}, time.Minute); err != nil || !claimed {
				t.Errorf("claim over a stale entry: %v %v, want claimed", claimed, err)
			}
			if existing, claimed, err := s.Claim(ctx, "k", idempotency.Entry{RequestHash: "h", Started: time.Now()}, time.Minute); err != nil || claimed || existing == nil {
				t.Errorf("claim over a live entry: %v %v %v, want refused", existing, claimed, err)
			}
		})
	}
}
