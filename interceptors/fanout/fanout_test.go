package fanout_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors/fanout"
	"github.com/kgents/kgents-go/interceptors/logging"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// sessions answers GetSession and ListSessions with nothing.
type sessions struct {
	sessionsv1.UnimplementedSessionsServiceServer
}

func (sessions) GetSession(context.Context, *sessionsv1.GetSessionRequest) (*sessionsv1.GetSessionResponse, error) {
	return &sessionsv1.GetSessionResponse{}, nil
}

func (sessions) ListSessions(context.Context, *sessionsv1.ListSessionsRequest) (*sessionsv1.ListSessionsResponse, error) {
	return &sessionsv1.ListSessionsResponse{}, nil
}

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The interceptor tags a session-scoped call with its session id (the rpc
// log line and the call's span) and leaves other calls alone.
func TestInterceptorTagsSessionScopedCalls(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	lg := logging.New(log, nil)
	fo := fanout.New([]string{sessionsv1.SessionsService_GetSession_FullMethodName})
	// A span per call, as the stats handler makes in kgentsd.
	spanned := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		ctx, span := tp.Tracer("test").Start(ctx, info.FullMethod)
		defer span.End()
		return h(ctx, req)
	}
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(spanned, lg.Unary(), fo.Unary()))
	sessionsv1.RegisterSessionsServiceServer(srv, sessions{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	client := sessionsv1.NewSessionsServiceClient(conn)
	ctx := context.Background()
	const id = "0f6a3c1e-8c4b-4b8e-9a55-1d2e3f4a5b6c"
	if _, err := client.GetSession(ctx, &sessionsv1.GetSessionRequest{SessionId: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.ListSessions(ctx, &sessionsv1.ListSessionsRequest{}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("log lines: %q", lines)
	}
	if !strings.Contains(lines[0], "GetSession") || !strings.Contains(lines[0], "session_id="+id) {
		t.Errorf("GetSession's line has no session id: %s", lines[0])
	}
	if strings.Contains(lines[1], "session_id") {
		t.Errorf("ListSessions is not session-scoped: %s", lines[1])
	}
	var tagged []string
	for _, s := range spans.Ended() {
		for _, a := range s.Attributes() {
			if a.Key == attribute.Key("kgents.session_id") {
				tagged = append(tagged, s.Name()+"="+a.Value.AsString())
			}
		}
	}
	if len(tagged) != 1 || tagged[0] != sessionsv1.SessionsService_GetSession_FullMethodName+"="+id {
		t.Errorf("tagged spans: %v", tagged)
	}
}

// Publisher hands each event to this replica's hub at once and to
// JetStream, on the session's subject with its tenant and id headers.
func TestPublisherToHubAndJetStream(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := streaming.Connect(ctx, streaming.Options{Enabled: true, Servers: []string{srv.URL()}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if err := streaming.EnsureEventsStream(ctx, conn.JetStream(), 1); err != nil {
		t.Fatal(err)
	}
	pub, err := streaming.NewPublisher(conn, streaming.PublisherOptions{
		SpoolDir: filepath.Join(t.TempDir(), "spool"), Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close(context.Background()) })
	hub := streaming.NewHub(conn, streaming.HubOptions{})
	reg := prometheus.NewRegistry()
	sink := fanout.NewPublisher(hub, pub, nil, slog.New(slog.DiscardHandler), reg)
	const session = "3b1f9a7e-2c44-4d2a-8f0e-5a6b7c8d9e0f"
	feed := hub.Subscribe(session)
	defer feed.Close()

	ev := &sessionsv1.SessionEvent{Id: "7", SessionId: session, Time: timestamppb.Now(),
		Payload: &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: "hello", Index: 0}}}
	began := time.Date(2026, 12, 7, 12, 0, 0, 123456789, time.UTC)
	sink.Publish(ctx, "tenant-a", ev, began)
	select {
	case got := <-feed.Events():
		if got.GetId() != "7" || got.GetChunk().GetText() != "hello" {
			t.Errorf("hub delivered %v", got)
		}
	case <-ctx.Done():
		t.Fatal("the hub got nothing")
	}
	if err := pub.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	stored, err := conn.JetStream().Stream(ctx, streaming.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := stored.GetLastMsgForSubject(ctx, streaming.SessionSubject(session, "chunk"))
	if err != nil {
		t.Fatalf("not in JetStream: %v", err)
	}
	if m.Header.Get(streaming.HeaderTenant) != "tenant-a" || m.Header.Get(streaming.HeaderEventID) != "7" ||
		m.Header.Get(jetstream.MsgIDHeader) != streaming.EventMsgID(ev) ||
		m.Header.Get(streaming.HeaderTurnStarted) != "2026-12-07T12:00:00.123456789Z" {
		t.Errorf("headers %v", m.Header)
	}
	tenant, back, err := streaming.DecodeEvent(m.Data)
	if err != nil || tenant != "tenant-a" || back.GetChunk().GetText() != "hello" {
		t.Errorf("stored %v %v (%v)", tenant, back, err)
	}

	// Without JetStream (NATS disabled) the hub still gets every event.
	local := fanout.NewPublisher(hub, nil, nil, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	local.Publish(ctx, "tenant-a", &sessionsv1.SessionEvent{Id: "8", SessionId: session,
		Payload: &sessionsv1.SessionEvent_End{End: &sessionsv1.EndEvent{Reason: "shutdown"}}}, time.Time{})
	select {
	case got := <-feed.Events():
		if got.GetId() != "8" {
			t.Errorf("hub delivered %v", got)
		}
	case <-ctx.Done():
		t.Fatal("the hub got nothing without JetStream")
	}
}

// While the durable publisher spools with NATS still connected (its
// JetStream breaker open through a leader election, here JetStream turned
// off), watchers on another replica still get each event live; the
// durable copy reaches the stream once JetStream is back.
func TestPublisherBroadcastsWhileSpooling(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	connect := func() *streaming.Conn {
		c, err := streaming.Connect(ctx, streaming.Options{Enabled: true, Servers: []string{srv.URL()}, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	a, b := connect(), connect()
	if err := streaming.EnsureEventsStream(ctx, a.JetStream(), 1); err != nil {
		t.Fatal(err)
	}
	pub, err := streaming.NewPublisher(a, streaming.PublisherOptions{
		SpoolDir: filepath.Join(t.TempDir(), "spool"), Registerer: prometheus.NewRegistry(), Logger: quiet,
		AckTimeout: 300 * time.Millisecond, BreakerOpen: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close(context.Background()) })
	sink := fanout.NewPublisher(streaming.NewHub(a, streaming.HubOptions{}), pub, nil, quiet, prometheus.NewRegistry())
	const session = "9c2d4e6f-1a3b-4c5d-8e7f-0a1b2c3d4e5f"
	elsewhere := streaming.NewHub(b, streaming.HubOptions{}).Subscribe(session)
	defer elsewhere.Close()

	srv.PauseJetStream()
	event := func(id string) *sessionsv1.SessionEvent {
		return &sessionsv1.SessionEvent{Id: id, SessionId: session, Time: timestamppb.Now(),
			Payload: &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: "w" + id}}}
	}
	// Publishes fail until the publisher spools (Flush returns once each is
	// acknowledged or spooled).
	for i := 1; !pub.Spooling(); i++ {
		if i > 20 {
			t.Fatal("the publisher never started spooling")
		}
		sink.Publish(ctx, "tenant-a", event(strconv.Itoa(i)), time.Time{})
		if err := pub.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	sink.Publish(ctx, "tenant-a", event("1000"), time.Time{})
	for {
		select {
		case got := <-elsewhere.Events():
			if got.GetId() != "1000" {
				continue // earlier attempts may arrive too
			}
		case <-ctx.Done():
			t.Fatal("a watcher on another replica did not get the event while the publisher spooled")
		}
		break
	}
	srv.ResumeJetStream()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if stream, err := b.JetStream().Stream(ctx, streaming.EventsStream); err == nil {
			m, err := stream.GetLastMsgForSubject(ctx, streaming.SessionSubject(session, "chunk"))
			if err == nil && m.Header.Get(streaming.HeaderEventID) == "1000" {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatal("the spooled event never reached the stream")
		case <-tick.C:
		}
	}
}
