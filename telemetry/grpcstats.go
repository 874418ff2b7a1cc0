package telemetry

import (
	"context"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
)

// ServerStatsHandler is the gRPC servers' OpenTelemetry stats handler
// (otelgrpc; both surfaces use it: native gRPC and the gateway's
// in-process channel). It gives a call a span only where the span can be
// seen: always when traces are exported, otherwise only for a call that
// arrives with a trace context (`traceparent`), whose trace the span
// continues — so its log lines carry the caller's trace_id and a caller's
// sampled trace is still recorded. A call with neither gets no span: its
// ids would name a trace recorded nowhere, and starting the span (ids,
// attributes, the propagators' extraction) and handling its events was
// ~7 % of a loaded server's CPU (docs/benchmarks.md). Its log lines keep
// their request_id.
func (t *Tracing) ServerStatsHandler() stats.Handler {
	h := otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(t.Provider),
		otelgrpc.WithPropagators(t.Propagator),
		// gRPC's metrics are the Prometheus interceptor's.
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
	)
	if t.Exporting {
		return h
	}
	return continuedOnly{h}
}

// continuedOnly passes to its handler only the calls that carry a trace
// context.
type continuedOnly struct{ stats.Handler }

// tracedKey marks the context of a call handed to the handler.
type tracedKey struct{}

func (h continuedOnly) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	// A key present but empty is no trace context either: the propagator
	// would find nothing to continue.
	if v := metadata.ValueFromIncomingContext(ctx, "traceparent"); len(v) == 0 || v[0] == "" {
		return ctx
	}
	return context.WithValue(h.Handler.TagRPC(ctx, info), tracedKey{}, struct{}{})
}

func (h continuedOnly) HandleRPC(ctx context.Context, s stats.RPCStats) {
	if ctx.Value(tracedKey{}) != nil {
		h.Handler.HandleRPC(ctx, s)
	}
}
