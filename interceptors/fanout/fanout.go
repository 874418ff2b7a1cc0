package fanout

import (
	"context"
	"log/slog"
	"time"

	mwinterceptors "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/streaming"
)

// Interceptor tags session-scoped calls with their session id.
type Interceptor struct {
	methods interceptors.Methods
}

// New returns the interceptor for the given full method names (the calls
// whose request names a session).
func New(methods []string) *Interceptor {
	return &Interceptor{methods: interceptors.MethodSet(methods...)}
}

// Unary is the unary interceptor; other methods pass through (selector).
func (i *Interceptor) Unary() grpc.UnaryServerInterceptor {
	return selector.UnaryServerInterceptor(mwinterceptors.UnaryServerInterceptor(i), i.methods)
}

// Stream is the stream interceptor; other methods pass through (selector).
func (i *Interceptor) Stream() grpc.StreamServerInterceptor {
	return selector.StreamServerInterceptor(mwinterceptors.StreamServerInterceptor(i), i.methods)
}

// ServerReporter implements go-grpc-middleware's Reportable: the request,
// once received, names the session.
func (i *Interceptor) ServerReporter(ctx context.Context, _ mwinterceptors.CallMeta) (mwinterceptors.Reporter, context.Context) {
	return &sessionTagger{ctx: ctx}, ctx
}

// sessionTagger records the session id of the call's request.
type sessionTagger struct {
	mwinterceptors.NoopReporter
	ctx    context.Context
	tagged bool
}

func (r *sessionTagger) PostMsgReceive(req any, err error, _ time.Duration) {
	s, ok := req.(interface{ GetSessionId() string })
	if err != nil || !ok || r.tagged || s.GetSessionId() == "" {
		return
	}
	r.tagged = true
	if tags := interceptors.TagsFrom(r.ctx); tags != nil {
		tags.SessionID = s.GetSessionId()
	}
	trace.SpanFromContext(r.ctx).SetAttributes(attribute.String("kgents.session_id", s.GetSessionId()))
}

// MessagePublisher publishes to JetStream durably (*streaming.Publisher):
// directly when NATS is up, through the local spool while it is not.
type MessagePublisher interface {
	Publish(m streaming.Message)
	// Spooling reports that messages go to the local spool for now.
	Spooling() bool
}

// Publisher is the Sessions service's event sink: every event goes to this replica's hub
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

// Publish hands ev to the hub and to JetStream; turnStarted (zero: none)
// goes with it as streaming.HeaderTurnStarted.
func (p *Publisher) Publish(ctx context.Context, tenantID string, ev *sessionsv1.SessionEvent, turnStarted time.Time) {
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
	m := streaming.Message{
		Subject: streaming.SessionSubject(ev.GetSessionId(), typ),
		Data:    data,
		MsgID:   streaming.EventMsgID(ev),
		Header:  map[string]string{streaming.HeaderTenant: tenantID, streaming.HeaderEventID: ev.GetId()},
	}
	if !turnStarted.IsZero() {
		m.Header[streaming.HeaderTurnStarted] = turnStarted.UTC().Format(time.RFC3339Nano)
	}
	if p.pub.Spooling() {
		// The durable copy waits in the spool; watchers on other replicas
		// get the event live anyway (a core publish while connected).
		p.hub.Broadcast(m)
	}
	p.pub.Publish(m)
	if p.tracer != nil && (typ == "complete" || typ == "error") {
		// One span per turn's end, not per chunk: enough to find a turn's
		// fan-out in a trace without a span per word.
		_, span := p.tracer.Start(ctx, "fanout.publish",
			trace.WithAttributes(attribute.String("kgents.event_type", typ), attribute.String("kgents.event_id", ev.GetId())))
		span.End()
	}
}
