package metering

import (
	"context"
	"log/slog"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	mwinterceptors "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/tenancy"
)

// Emitter takes usage events on their way to the metering stream. Emit must
// not block on the network: the call that produced the event is waiting.
type Emitter interface {
	Emit(ev event.Event)
}

// Meter is the metering interceptor. It is built on go-grpc-middleware's
// reporter, so unary and streaming calls are metered the same way, at the
// end of the call — for a stream, when it ends, cancelled or not, with what
// it really produced (a session turn the caller left still finishes first:
// its handler waits for it).
type Meter struct {
	emit       Emitter
	now        func() time.Time
	log        *slog.Logger
	failed     prometheus.Counter
	idempotent func(fullMethod string) bool
}

// New returns the interceptor; events that cannot be built are counted in
// kgents_metering_event_errors_total on reg (and logged).
func New(emit Emitter, log *slog.Logger, reg prometheus.Registerer) *Meter {
	m := &Meter{
		emit: emit, now: time.Now, log: log,
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kgents_metering_event_errors_total",
			Help: "Usage events that could not be built (a bug: they are lost).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.failed)
	}
	return m
}

// HonourIdempotencyKeys names the methods whose Idempotency-Key the
// idempotency interceptor honours; only their keys shape event ids (see
// eventBase). Without it every call gets ids of its own.
func (m *Meter) HonourIdempotencyKeys(idempotent func(fullMethod string) bool) *Meter {
	m.idempotent = idempotent
	return m
}

// Unary is the unary interceptor.
func (m *Meter) Unary() grpc.UnaryServerInterceptor { return mwinterceptors.UnaryServerInterceptor(m) }

// Stream is the stream interceptor.
func (m *Meter) Stream() grpc.StreamServerInterceptor {
	return mwinterceptors.StreamServerInterceptor(m)
}

// ServerReporter starts metering a call: a Recorder goes into its context.
// Calls with no tenant (public services) are not metered.
func (m *Meter) ServerReporter(ctx context.Context, meta mwinterceptors.CallMeta) (mwinterceptors.Reporter, context.Context) {
	id := tenancy.IdentityFrom(ctx)
	if id == nil {
		return mwinterceptors.NoopReporter{}, ctx
	}
	rec := &Recorder{}
	r := &report{m: m, ctx: ctx, meta: meta, id: id, rec: rec}
	if m.idempotent != nil && m.idempotent(meta.FullMethod()) {
		if k := interceptors.FirstValue(ctx, "idempotency-key"); k != "" && len(k) <= 255 {
			r.keyBase = billing.IdempotencyBase(id.TenantID, meta.FullMethod()+"\x00"+k)
		}
	}
	return r, WithRecorder(ctx, rec)
}

// eventBase is what the call's event ids derive from. A successful call of
// an idempotent method with an Idempotency-Key uses the tenant, method and
// key: its replays (answered from the idempotency store, also successful)
// produce the same ids and are billed once. Everything else — calls without
// a key, methods that ignore keys, failed attempts (which the idempotency
// store forgets, so a retry really runs again and must be billed again) —
// gets an id this server makes for the call. Never the client's
// X-Request-ID, which a client could reuse to suppress billing.
func (r *report) eventBase(code codes.Code) string {
	if code == codes.OK && r.keyBase != "" {
		return r.keyBase
	}
	return uuid.NewString()
}

type report struct {
	m    *Meter
	ctx  context.Context
	meta mwinterceptors.CallMeta
	id   *tenancy.Identity
	rec  *Recorder
	// keyBase is the id base from the call's Idempotency-Key ("" if none).
	keyBase string
	base    string
}

func (r *report) PostMsgSend(any, error, time.Duration)    {}
func (r *report) PostMsgReceive(any, error, time.Duration) {}

// PostCall emits the call's events: api.request, then what the services
// recorded, each with its own deterministic id.
func (r *report) PostCall(err error, d time.Duration) {
	now := r.m.now()
	code := status.Code(err)
	info := interceptors.InfoFrom(r.ctx)
	endpoint, method := r.meta.FullMethod(), "GRPC"
	if info.ViaGateway && info.HTTPRoute != "" {
		endpoint, method = info.HTTPRoute, info.HTTPMethod
	}
	tenant := r.id.TenantID
	r.base = r.eventBase(code)
	r.send(billing.NewAPIRequest(billing.EventID(r.base, billing.TypeAPIRequest, 0), tenant, now, billing.APIRequest{
		Endpoint:   endpoint,
		Method:     method,
		StatusCode: interceptors.HTTPStatus(code),
		GRPCCode:   int(code),
		DurationMS: float64(d.Microseconds()) / 1000,
	}))
	if code == codes.ResourceExhausted && r.rec.empty() {
		return // refused by quota: nothing else happened
	}
	tokens, invokes, sessions := r.rec.Drain()
	for i, t := range tokens {
		r.send(billing.NewLLMTokens(billing.EventID(r.base, billing.TypeLLMTokens, i), tenant, now, billing.LLMTokens{
			TokensIn: t.TokensIn, TokensOut: t.TokensOut, TokensTotal: t.TokensIn + t.TokensOut,
			Model: t.Model, SessionID: t.SessionID, Mode: t.Mode, Budget: t.Budget,
		}))
	}
	for i, inv := range invokes {
		r.send(billing.NewAgenteseInvoke(billing.EventID(r.base, billing.TypeAgenteseInvoke, i), tenant, now, billing.AgenteseInvoke{
			Path: inv.Path, Aspect: inv.Aspect, TokensUsed: inv.TokensUsed,
		}))
	}
	creates, messages := 0, 0
	for _, s := range sessions {
		if s.Role == "" {
			r.send(billing.NewSessionCreate(billing.EventID(r.base, billing.TypeSessionCreate, creates), tenant, now, billing.SessionCreate{
				SessionID: s.SessionID, AgentType: s.AgentType,
			}))
			creates++
			continue
		}
		r.send(billing.NewSessionMessage(billing.EventID(r.base, billing.TypeSessionMessage, messages), tenant, now, billing.SessionMessage{
			SessionID: s.SessionID, Role: s.Role, MessageLength: s.MessageLength,
		}))
		messages++
	}
}

func (r *report) send(ev event.Event, err error) {
	if err != nil {
		r.m.failed.Inc()
		r.m.log.ErrorContext(r.ctx, "usage event could not be built", "error", err)
		return
	}
	r.m.emit.Emit(ev)
}

func (r *Recorder) empty() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.tokens) == 0 && len(r.invokes) == 0 && len(r.sessions) == 0
}
