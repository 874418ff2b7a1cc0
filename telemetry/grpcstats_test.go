package telemetry

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors/interceptortest"
)

// TestServerStatsHandler serves the test Soul service behind the stats
// handler and looks at the spans recorded and the span context the handler
// sees (what log lines take trace_id from).
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
			ended := make(chan struct{})
			conn := interceptortest.Serve(t, &interceptortest.Soul{
				OnDialogue: func(ctx context.Context, _ *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
					seen <- trace.SpanContextFromContext(ctx)
					return &soulv1.DialogueResponse{}, nil
				},
			}, interceptortest.Chain{Options: []grpc.ServerOption{
				grpc.StatsHandler(tr.ServerStatsHandler()),
				// Runs after it: once it has the call's end, the span (if
				// any) has ended.
				grpc.StatsHandler(endSignal(ended)),
			}})

			ctx := context.Background()
			for _, v := range tt.traceparent {
				ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", v)
			}
			if _, err := soulv1.NewSoulServiceClient(conn).Dialogue(ctx, &soulv1.DialogueRequest{}); err != nil {
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
			<-ended
			if got := len(rec.Ended()); got != tt.wantSpans {
				t.Errorf("%d spans recorded, want %d", got, tt.wantSpans)
			}
		})
	}
}

// endSignal is a stats handler that closes ended at the end of its one call.
type endSignal chan struct{}

func (e endSignal) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (e endSignal) HandleRPC(_ context.Context, s stats.RPCStats) {
	if _, ok := s.(*stats.End); ok {
		close(e)
	}
}
func (e endSignal) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (e endSignal) HandleConn(context.Context, stats.ConnStats)                       {}
