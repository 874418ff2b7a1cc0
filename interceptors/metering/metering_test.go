package metering_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/idempotency"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/tenancy"
)

type capture struct {
	mu     sync.Mutex
	events []event.Event
}

func (c *capture) Emit(events []event.Event) {
	c.mu.Lock()
	c.events = append(c.events, events...)
	c.mu.Unlock()
}

func (c *capture) byType(typ string) []event.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []event.Event
	for _, e := range c.events {
		if e.Type() == typ {
			out = append(out, e)
		}
	}
	return out
}

func data(t *testing.T, e event.Event) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(e.Data(), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func tenantCtx(key string) context.Context {
	ctx := tenancy.WithIdentity(context.Background(), &tenancy.Identity{TenantID: "tenant-1", KeyID: "k"})
	if key != "" {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("idempotency-key", key))
	}
	return ctx
}

const method = "/kgents.soul.v1.SoulService/Dialogue"

func TestUnaryEmitsRequestAndRecordedUsage(t *testing.T) {
	t.Parallel()
	c := &capture{}
	ic := metering.New(c, slog.New(slog.NewTextHandler(io.Discard, nil)), nil).Unary()
	handler := func(ctx context.Context, _ any) (any, error) {
		metering.RecordTokens(ctx, metering.TokenUsage{TokensIn: 10, TokensOut: 32, Model: "m", SessionID: "s1", Mode: "reflect", Budget: "dialogue"})
		metering.RecordSession(ctx, metering.SessionUsage{SessionID: "s1", AgentType: "kgent"})
		metering.RecordSession(ctx, metering.SessionUsage{SessionID: "s1", Role: "user", MessageLength: 5})
		metering.RecordSession(ctx, metering.SessionUsage{SessionID: "s1", Role: "assistant", MessageLength: 40})
		metering.RecordInvoke(ctx, metering.InvokeUsage{Path: "self.soul.challenge", Aspect: "challenge", TokensUsed: 7})
		return "ok", nil
	}
	if _, err := ic(tenantCtx(""), "req", &grpc.UnaryServerInfo{FullMethod: method}, handler); err != nil {
		t.Fatal(err)
	}
	reqs := c.byType("api.request")
	if len(reqs) != 1 {
		t.Fatalf("%d api.request events", len(reqs))
	}
	r := reqs[0]
	if r.Subject() != "tenant-1" || r.Source() != "kgents-api" || r.SpecVersion() != "1.0" || r.ID() == "" {
		t.Errorf("envelope %v", r)
	}
	d := data(t, r)
	if d["endpoint"] != method || d["method"] != "GRPC" || d["status_code"] != 200.0 || d["grpc_code"] != 0.0 {
		t.Errorf("api.request data %v", d)
	}
	tok := c.byType("llm.tokens")
	if len(tok) != 1 || data(t, tok[0])["tokens_total"] != 42.0 || data(t, tok[0])["session_id"] != "s1" {
		t.Errorf("llm.tokens %v", tok)
	}
	if len(c.byType("session.create")) != 1 || len(c.byType("session.message")) != 2 || len(c.byType("agentese.invoke")) != 1 {
		t.Errorf("events %v", c.events)
	}
	ids := map[string]bool{}
	for _, e := range c.events {
		if ids[e.ID()] {
			t.Errorf("duplicate id %s", e.ID())
		}
		ids[e.ID()] = true
	}
}

// TestIdempotencyKeyIDs runs metering outside the real idempotency
// interceptor, as the server does. A replay of a successful keyed call is
// billed under the run's ids (deduplicated); everything that really runs —
// a retry after a failure, a key reused after its entry expired, a key on a
// method that ignores it, no key — gets ids of its own.
func TestIdempotencyKeyIDs(t *testing.T) {
	t.Parallel()
	const sendMessage = "/kgents.sessions.v1.SessionsService/SendMessage"
	store := idempotency.NewMemory(200 * time.Millisecond)
	idem := idempotency.New(store, []string{sendMessage}, time.Minute, slog.Default()).Unary()
	run := func(fullMethod, key string, fail bool) []event.Event {
		c := &capture{}
		meter := metering.New(c, slog.Default(), nil).Unary()
		info := &grpc.UnaryServerInfo{FullMethod: fullMethod}
		handler := func(ctx context.Context, _ any) (any, error) {
			metering.RecordTokens(ctx, metering.TokenUsage{TokensOut: 3})
			if fail {
				return nil, status.Error(codes.Unavailable, "engine failed mid-reply")
			}
			return &soulv1.DialogueResponse{Response: "ok"}, nil
		}
		ctx := interceptors.WithTags(tenantCtx(key), &interceptors.Tags{})
		_, _ = meter(ctx, &soulv1.DialogueRequest{Prompt: "same"}, info, func(ctx context.Context, req any) (any, error) {
			return idem(ctx, req, info, handler)
		})
		return c.events
	}
	apiRequestID := func(evs []event.Event) string {
		for _, e := range evs {
			if e.Type() == "api.request" {
				return e.ID()
			}
		}
		t.Fatal("no api.request event")
		return ""
	}

	first := run(sendMessage, "k-1", false)
	if len(first) != 2 {
		t.Fatalf("first run: %d events, want api.request and llm.tokens", len(first))
	}
	if replay := run(sendMessage, "k-1", false); len(replay) != 1 || apiRequestID(replay) != apiRequestID(first) {
		t.Errorf("a replay must bill only api.request, under the run's id: %v vs %v", replay, first)
	}

	failed := run(sendMessage, "k-2", true)
	retried := run(sendMessage, "k-2", false)
	if len(retried) != 2 || apiRequestID(failed) == apiRequestID(retried) || failed[1].ID() == retried[1].ID() {
		t.Errorf("a retry after a failure ran again: it needs ids of its own: %v vs %v", failed, retried)
	}

	time.Sleep(300 * time.Millisecond) // k-1's entry expires
	if again := run(sendMessage, "k-1", false); len(again) != 2 || apiRequestID(again) == apiRequestID(first) {
		t.Errorf("a key reused after it expired ran again: it needs ids of its own: %v", again)
	}

	for _, tt := range []struct{ name, method, key string }{
		{"a method that ignores keys", method, "k-3"},
		{"no key", sendMessage, ""},
	} {
		a, b := run(tt.method, tt.key, false), run(tt.method, tt.key, false)
		if apiRequestID(a) == apiRequestID(b) {
			t.Errorf("%s: two calls that both ran share ids", tt.name)
		}
	}
}

func TestRejectedCallsAreMeteredWithTheirStatus(t *testing.T) {
	t.Parallel()
	c := &capture{}
	ic := metering.New(c, slog.Default(), nil).Unary()
	quotaRefusal := func(context.Context, any) (any, error) {
		return nil, status.Error(codes.ResourceExhausted, "slow down")
	}
	_, _ = ic(tenantCtx(""), nil, &grpc.UnaryServerInfo{FullMethod: method}, quotaRefusal)
	reqs := c.byType("api.request")
	if len(reqs) != 1 || data(t, reqs[0])["status_code"] != 429.0 || data(t, reqs[0])["grpc_code"] != 8.0 {
		t.Errorf("429 metering %v", c.events)
	}
	// Calls without a tenant (public services) are not metered.
	_, _ = ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/grpc.health.v1.Health/Check"}, func(context.Context, any) (any, error) { return nil, nil })
	if len(c.events) != 1 {
		t.Errorf("public call metered: %v", c.events)
	}
}

func TestGatewayCallsUseTheRouteTemplate(t *testing.T) {
	t.Parallel()
	c := &capture{}
	ic := metering.New(c, slog.Default(), nil).Unary()
	ctx := peer.NewContext(tenantCtx(""), &peer.Peer{Addr: interceptors.GatewayAddr{}})
	ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(interceptors.MDHTTPRoute, "/v1/kgent/sessions/{session_id}", interceptors.MDHTTPMethod, "GET"))
	_, _ = ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/kgents.sessions.v1.SessionsService/GetSession"}, func(context.Context, any) (any, error) {
		return nil, status.Error(codes.NotFound, "no")
	})
	d := data(t, c.byType("api.request")[0])
	if d["endpoint"] != "/v1/kgent/sessions/{session_id}" || d["method"] != "GET" || d["status_code"] != 404.0 {
		t.Errorf("gateway call metered as %v", d)
	}
	// A native caller cannot claim a route: its metadata is ignored.
	c2 := &capture{}
	ic2 := metering.New(c2, slog.Default(), nil).Unary()
	native := peer.NewContext(tenantCtx(""), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}})
	native = metadata.NewIncomingContext(native, metadata.Pairs(interceptors.MDHTTPRoute, "/forged", interceptors.MDHTTPMethod, "GET"))
	_, _ = ic2(native, nil, &grpc.UnaryServerInfo{FullMethod: method}, func(context.Context, any) (any, error) { return nil, nil })
	if d := data(t, c2.byType("api.request")[0]); d["endpoint"] != method || d["method"] != "GRPC" {
		t.Errorf("forged route accepted: %v", d)
	}
}

// TestStreamMeteredAtItsEnd: usage recorded while the stream runs (also
// after the caller is gone) is emitted when the stream ends.
func TestStreamMeteredAtItsEnd(t *testing.T) {
	t.Parallel()
	c := &capture{}
	ic := metering.New(c, slog.Default(), nil).Stream()
	ss := &fakeStream{ctx: tenantCtx("")}
	err := ic(nil, ss, &grpc.StreamServerInfo{FullMethod: "/kgents.sessions.v1.SessionsService/StreamMessage", IsServerStream: true},
		func(_ any, s grpc.ServerStream) error {
			time.Sleep(10 * time.Millisecond)
			metering.RecordTokens(s.Context(), metering.TokenUsage{TokensOut: 9})
			return status.Error(codes.Canceled, "caller gone")
		})
	if status.Code(err) != codes.Canceled {
		t.Fatal(err)
	}
	if len(c.byType("llm.tokens")) != 1 || data(t, c.byType("api.request")[0])["status_code"] != 499.0 {
		t.Errorf("stream metering %v", c.events)
	}
	if d := data(t, c.byType("api.request")[0]); d["duration_ms"].(float64) < 10 {
		t.Errorf("duration %v", d["duration_ms"])
	}
}

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (f *fakeStream) Context() context.Context { return f.ctx }

type discard struct{}

func (discard) Emit([]event.Event) {}

// BenchmarkMeterUnary is one metered dialogue call: api.request and
// llm.tokens built (the emitter drops them).
func BenchmarkMeterUnary(b *testing.B) {
	ic := metering.New(discard{}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil).Unary()
	ctx := tenantCtx("")
	info := &grpc.UnaryServerInfo{FullMethod: method}
	handler := func(ctx context.Context, _ any) (any, error) {
		metering.RecordTokens(ctx, metering.TokenUsage{TokensIn: 10, TokensOut: 32, Model: "kgent-template", Mode: "advise", Budget: "dialogue"})
		return nil, nil
	}
	b.ReportAllocs()
	for b.Loop() {
		_, _ = ic(ctx, nil, info, handler)
	}
}

// blockingEmitter holds every Emit until release is closed, telling
// entered each time one starts.
type blockingEmitter struct {
	capture
	entered chan struct{}
	release chan struct{}
}

func (b *blockingEmitter) Emit(events []event.Event) {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	<-b.release
	b.capture.Emit(events)
}

// TestAsyncEmitsOffTheCallAndDrainsOnClose: in async mode the call returns
// before its events are built; Close waits for them; a full queue or a
// closed Meter builds them on the caller's goroutine, so none is lost.
func TestAsyncEmitsOffTheCallAndDrainsOnClose(t *testing.T) {
	t.Parallel()
	em := &blockingEmitter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	m := metering.New(em, slog.New(slog.NewTextHandler(io.Discard, nil)), nil).Async(1)
	ic := m.Unary()
	handler := func(ctx context.Context, _ any) (any, error) {
		metering.RecordTokens(ctx, metering.TokenUsage{TokensOut: 5})
		return "ok", nil
	}
	call := func() {
		if _, err := ic(tenantCtx(""), nil, &grpc.UnaryServerInfo{FullMethod: method}, handler); err != nil {
			t.Error(err)
		}
	}

	// The first call is taken by the worker, which blocks in Emit; the
	// second waits in the queue; neither call waits for its events.
	done := make(chan struct{})
	go func() {
		call()
		<-em.entered // the worker holds the first call's events
		call()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("calls waited for their usage events")
	}
	// The queue (1) is now full: a third call builds its events itself,
	// blocking on the emitter like the worker.
	third := make(chan struct{})
	go func() { call(); close(third) }()
	select {
	case <-third:
		t.Fatal("a call with the queue full returned before emitting: its events would be lost")
	case <-time.After(50 * time.Millisecond):
	}
	close(em.release)
	<-third

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(em.byType("api.request")); got != 3 {
		t.Errorf("%d api.request events after Close, want 3", got)
	}
	if got := len(em.byType("llm.tokens")); got != 3 {
		t.Errorf("%d llm.tokens events after Close, want 3", got)
	}
	// After Close, calls (a forced shutdown's stragglers) still emit.
	call()
	if got := len(em.byType("api.request")); got != 4 {
		t.Errorf("%d api.request events after a call past Close, want 4", got)
	}
	if err := m.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// batchEmitter records the size of each Emit, holding the first until
// release is closed.
type batchEmitter struct {
	capture
	sizes   []int
	entered chan struct{}
	release chan struct{}
}

func (b *batchEmitter) Emit(events []event.Event) {
	b.mu.Lock()
	first := len(b.sizes) == 0
	b.sizes = append(b.sizes, len(events))
	b.mu.Unlock()
	if first {
		close(b.entered)
		<-b.release
	}
	b.capture.Emit(events)
}

// TestAsyncBatchesQueuedCalls: calls queued while the worker is busy go
// out together, in one Emit of at most MaxBatchEvents events; a call on
// its own goes out alone at once.
func TestAsyncBatchesQueuedCalls(t *testing.T) {
	t.Parallel()
	em := &batchEmitter{entered: make(chan struct{}), release: make(chan struct{})}
	m := metering.New(em, slog.New(slog.NewTextHandler(io.Discard, nil)), nil).Async(1000)
	ic := m.Unary()
	handler := func(ctx context.Context, _ any) (any, error) {
		metering.RecordTokens(ctx, metering.TokenUsage{TokensOut: 5})
		return "ok", nil
	}
	call := func() {
		if _, err := ic(tenantCtx(""), nil, &grpc.UnaryServerInfo{FullMethod: method}, handler); err != nil {
			t.Error(err)
		}
	}
	call()
	<-em.entered       // the worker holds the first call's two events
	const queued = 100 // 200 events: two batches
	for range queued {
		call()
	}
	close(em.release)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	want := []int{2, metering.MaxBatchEvents, 2*queued - metering.MaxBatchEvents}
	if !slices.Equal(em.sizes, want) {
		t.Fatalf("Emit sizes %v, want %v", em.sizes, want)
	}
	if got := len(em.byType("api.request")); got != queued+1 {
		t.Errorf("%d api.request events, want %d", got, queued+1)
	}
	ids := map[string]bool{}
	for _, e := range em.events {
		if ids[e.ID()] {
			t.Fatalf("event id %s emitted twice", e.ID())
		}
		ids[e.ID()] = true
	}
}
