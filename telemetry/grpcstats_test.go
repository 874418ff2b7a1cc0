package telemetry

import (
	"context"
	"net"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// TestServerStatsHandler serves grpc.health.v1 behind the stats handler on
// loopback and looks at the spans recorded and the span context the
// handler's chain sees (what log lines take trace_id from).
func TestServerStatsHandler(t *testing.T) {
	t.Parallel()
	const (
		callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
		sampled     = "00-" + callerTrace + "-00f067aa0ba902b7-01"
		unsampled   = "00-" + callerTrace + "-00f067aa0ba902b7-00"
	)
	tests := []struct {
		name        string
		exporting   bool
		traceparent []string // nil: none sent
		wantSpans   int
		wantTrace   string // the trace id the chain sees; "" none, "new" a fresh one
	}{
		{name: "nothing exported, no trace context: no span", traceparent: nil, wantSpans: 0, wantTrace: ""},
		{name: "nothing exported, empty traceparent: no span", traceparent: []string{""}, wantSpans: 0, wantTrace: ""},
		{name: "nothing exported, caller's sampled trace: continued and recorded", traceparent: []string{sampled}, wantSpans: 1, wantTrace: callerTrace},
		{name: "nothing exported, caller's unsampled trace: continued, not recorded", traceparent: []string{unsampled}, wantSpans: 0, wantTrace: callerTrace},
		{name: "exported: a span for every call", exporting: true, traceparent: nil, wantSpans: 1, wantTrace: "new"},
		{name: "exported, caller's trace: continued", exporting: true, traceparent: []string{unsampled}, wantSpans: 0, wantTrace: callerTrace},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := tracetest.NewSpanRecorder()
			sampler := sdktrace.ParentBased(sdktrace.NeverSample())
			if tt.exporting {
				sampler = sdktrace.ParentBased(sdktrace.AlwaysSample())
			}
			tr := &Tracing{
				Provider:   sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sampler)),
				Propagator: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}),
				Exporting:  tt.exporting,
			}
			seen := make(chan trace.SpanContext, 1)
			srv := grpc.NewServer(grpc.StatsHandler(tr.ServerStatsHandler()), grpc.WaitForHandlers(true),
				grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
					seen <- trace.SpanContextFromContext(ctx)
					return h(ctx, req)
				}))
			healthpb.RegisterHealthServer(srv, health.NewServer())
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go func() { _ = srv.Serve(lis) }()
			t.Cleanup(srv.Stop)
			conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = conn.Close() })

			ctx := context.Background()
			for _, v := range tt.traceparent {
				ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", v)
			}
			if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatal(err)
			}
			sc := <-seen
			switch tt.wantTrace {
			case "":
				if sc.HasTraceID() {
					t.Errorf("the chain sees trace %s, want none", sc.TraceID())
				}
			case "new":
				if !sc.HasTraceID() || sc.TraceID().String() == callerTrace {
					t.Errorf("the chain sees trace %q, want a new one", sc.TraceID())
				}
			default:
				if got := sc.TraceID().String(); got != tt.wantTrace {
					t.Errorf("the chain sees trace %q, want the caller's %q", got, tt.wantTrace)
				}
			}
			// The span ends in the call's last stats event, which may run
			// just after the client has its answer: Stop waits for it
			// (WaitForHandlers).
			srv.Stop()
			if got := len(rec.Ended()); got != tt.wantSpans {
				t.Errorf("%d spans recorded, want %d", got, tt.wantSpans)
			}
		})
	}
}
