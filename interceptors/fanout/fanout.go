package fanout

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/streaming"
)

// Interceptor puts the Sink into the context of session-scoped calls (the
// methods that produce session events); other calls are untouched.
type Interceptor struct {
	sink    Sink
	methods map[string]bool
}

// New returns the interceptor for the given full method names.
func New(sink Sink, methods []string) *Interceptor {
	m := make(map[string]bool, len(methods))
	for _, name := range methods {
		m[name] = true
	}
	return &Interceptor{sink: sink, methods: m}
}

// Unary is the unary interceptor.
func (i *Interceptor) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if i.methods[info.FullMethod] {
			ctx = WithSink(ctx, i.sink)
		}
		return handler(ctx, req)
	}
}

// Stream is the stream interceptor.
func (i *Interceptor) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if i.methods[info.FullMethod] {
			ss = &sinkStream{ServerStream: ss, ctx: WithSink(ss.Context(), i.sink)}
		}
		return handler(srv, ss)
	}
}

type sinkStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *sinkStream) Context() context.Context { return s.ctx }

// MessagePublisher publishes to JetStream durably (*streaming.Publisher):
// directly when NATS is up, through the local spool while it is not.
type MessagePublisher interface {
	Publish(m streaming.Message)
}

// Publisher is the production Sink: every event goes to this replica's hub
// at once (same-replica watchers, also while NATS is down) and to JetStream
// for watchers elsewhere and for history.
type Publisher struct {
	hub       *streaming.Hub
	pub       MessagePublisher // nil when NATS is disabled
	log       *slog.Logger
	tracer    trace.Tracer
	published *prometheus.CounterVec
}

// NewPublisher returns the sink. pub may be nil (NATS disabled).
func NewPublisher(hub *streaming.Hub, pub MessagePublisher, tp trace.TracerProvider, log *slog.Logger, reg prometheus.Registerer) *Publisher {
	p := &Publisher{
		hub: hub, pub: pub, log: log,
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kgents_session_events_total",
			Help: "Session events fanned out, by event type.",
		}, []string{"event_type"}),
	}
	if tp != nil {
		p.tracer = tp.Tracer("kgents/fanout")
	}
	if reg != nil {
		reg.MustRegister(p.published)
	}
	return p
}

// Publish implements Sink.
func (p *Publisher) Publish(ctx context.Context, tenantID string, ev *sessionsv1.SessionEvent) {
	typ := streaming.EventType(ev)
	p.published.WithLabelValues(typ).Inc()
	p.hub.Deliver(ev)
	if p.pub == nil {
		return
	}
	data, err := streaming.EncodeEvent(tenantID, ev)
	if err != nil {
		p.log.Error("session event not encodable", "session_id", ev.GetSessionId(), "error", err)
		return
	}
	p.pub.Publish(streaming.Message{
		Subject: streaming.SessionSubject(ev.GetSessionId(), typ),
		Data:    data,
		MsgID:   streaming.EventMsgID(ev),
		Header:  map[string]string{streaming.HeaderTenant: tenantID, streaming.HeaderEventID: ev.GetId()},
	})
	if p.tracer != nil && (typ == "complete" || typ == "error") {
		// One span per turn's end, not per chunk: enough to find a turn's
		// fan-out in a trace without a span per word.
		_, span := p.tracer.Start(ctx, "fanout.publish",
			trace.WithAttributes(attribute.String("kgents.event_type", typ), attribute.String("kgents.event_id", ev.GetId())))
		span.End()
	}
}
