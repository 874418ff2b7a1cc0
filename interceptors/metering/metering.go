package metering

import (
	"context"
	"log/slog"
	"sync"
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

// Emitter takes usage events on their way to the metering stream: all the
// events of one call, or of several calls queued together (Async), at once
// — they travel as one message (billing.CallMessage). Emit must not block
// on the network.
type Emitter interface {
	Emit(events []event.Event)
}

// Meter is the metering interceptor. It is built on go-grpc-middleware's
// reporter, so unary and streaming calls are metered the same way, at the
// end of the call — for a stream, when it ends, cancelled or not, with what
// it really produced (a session turn the caller left still finishes first:
// its handler waits for it).
type Meter struct {
	emit Emitter
	now  func() time.Time
	// eventNow stamps the events' time (WithEventClock); now otherwise.
	eventNow func() time.Time
	log      *slog.Logger
	failed   prometheus.Counter

	// Async mode (nil queue: events are built on the caller's goroutine).
	queue   chan *call
	queueMu sync.RWMutex
	closed  bool
	inline  sync.WaitGroup // callers building their own events before Close
	drained chan struct{}

	// Durable mode (nil: off): see durable.go.
	durable *durable

	// late are the methods metered as the tenant their handler names (see
	// MeterLate).
	late interceptors.Methods
}

// MeterLate meters calls of methods that carry no identity when they start
// (sign-up: it needs no API key and makes the tenant) as the tenant the
// handler names in the call's interceptors.Tags once it knows it; a call
// that names none (a sign-up refused) is not metered, having no tenant to
// bill. Set before serving.
func (m *Meter) MeterLate(methods ...string) *Meter {
	m.late = interceptors.MethodSet(methods...)
	return m
}

// New returns the interceptor; events that cannot be built are counted in
// kgents_metering_event_errors_total on reg (and logged).
func New(emit Emitter, log *slog.Logger, reg prometheus.Registerer) *Meter {
	m := &Meter{
		emit: emit, now: time.Now, eventNow: time.Now, log: log,
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

// WithEventClock stamps the time of the events of calls that end with
// now() instead of the wall clock (a test spreading a day of traffic over
// its hours); durations and the records of calls in flight keep the wall
// clock. Set before serving.
func (m *Meter) WithEventClock(now func() time.Time) *Meter {
	if now != nil {
		m.eventNow = now
	}
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
		if m.late.Match(ctx, meta) {
			return &lateReport{m: m, ctx: ctx, meta: meta, start: m.now()}, ctx
		}
		return mwinterceptors.NoopReporter{}, ctx
	}
	rec := &Recorder{}
	r := &report{m: m, ctx: ctx, meta: meta, id: id, rec: rec, start: m.now()}
	if m.durable != nil {
		m.durable.track(r)
	}
	return r, WithRecorder(ctx, rec)
}

type report struct {
	m     *Meter
	ctx   context.Context
	meta  mwinterceptors.CallMeta
	id    *tenancy.Identity
	rec   *Recorder
	start time.Time

	baseMu sync.Mutex
	base   string // fixed at first use, so a durable record and the end agree
}

// eventBase is what the call's event ids derive from (see call.eventBase),
// chosen once per call.
func (r *report) eventBase() string {
	r.baseMu.Lock()
	defer r.baseMu.Unlock()
	if r.base == "" {
		c := &call{tenant: r.id.TenantID, usageID: r.rec.getUsageID()}
		r.base = c.eventBase()
	}
	return r.base
}

func (r *report) PostMsgSend(any, error, time.Duration)    {}
func (r *report) PostMsgReceive(any, error, time.Duration) {}

// PostCall hands what the call did to the Meter, which emits its events.
func (r *report) PostCall(err error, d time.Duration) {
	c := &call{
		ctx: r.ctx, method: interceptors.FullMethod(r.meta), info: interceptors.InfoFrom(r.ctx),
		tenant: r.id.TenantID, code: status.Code(err), d: d, at: r.m.eventNow(),
	}
	if t := interceptors.TagsFrom(r.ctx); t != nil {
		c.usageID = t.UsageID
		if c.usageID != "" && r.rec.getUsageID() == "" {
			r.rec.SetUsageID(c.usageID) // set by someone other than idempotency
		}
	}
	c.base = r.eventBase()
	c.tokens, c.invokes, c.sessions = r.rec.Drain()
	r.m.dispatch(c)
	if r.m.durable != nil {
		r.m.durable.done(r)
	}
}

// lateReport meters a MeterLate call once its handler has named its tenant.
type lateReport struct {
	m     *Meter
	ctx   context.Context
	meta  mwinterceptors.CallMeta
	start time.Time
}

func (r *lateReport) PostMsgSend(any, error, time.Duration)    {}
func (r *lateReport) PostMsgReceive(any, error, time.Duration) {}

func (r *lateReport) PostCall(err error, d time.Duration) {
	t := interceptors.TagsFrom(r.ctx)
	if t == nil || t.TenantID == "" {
		return
	}
	id := &tenancy.Identity{TenantID: t.TenantID, KeyID: t.KeyID}
	(&report{m: r.m, ctx: r.ctx, meta: r.meta, id: id, rec: &Recorder{}, start: r.start}).PostCall(err, d)
}

// call is what a finished call leaves for its usage events.
type call struct {
	ctx      context.Context // for the log line of an event that cannot be built
	method   string
	info     interceptors.CallInfo
	tenant   string
	usageID  string
	base     string // when set, the event base (chosen by the report)
	code     codes.Code
	d        time.Duration
	at       time.Time
	tokens   []TokenUsage
	invokes  []InvokeUsage
	sessions []SessionUsage
}

// eventBase is what the call's event ids derive from: the usage id the
// idempotency interceptor gave a call with an Idempotency-Key (fresh for a
// run, the stored run's for a replay, so a replay is billed once and work
// that really runs again — a retry after a failure, a key reused after it
// expired — is billed again), otherwise an id made here for the call.
// Never anything the client chose (an Idempotency-Key or X-Request-ID
// could be reused to suppress billing).
func (c *call) eventBase() string {
	if c.base != "" {
		return c.base
	}
	if c.usageID != "" {
		return billing.IdempotencyBase(c.tenant, c.usageID)
	}
	return uuid.NewString()
}

// emitEvents builds and emits a call's events.
func (m *Meter) emitEvents(c *call) {
	if events := m.buildEvents(c); len(events) > 0 {
		m.emit.Emit(events)
	}
}

// buildEvents builds a call's events: api.request, then what the services
// recorded, each with its own deterministic id. Events that cannot be built
// are counted and logged.
func (m *Meter) buildEvents(c *call) []event.Event {
	endpoint, method := c.method, "GRPC"
	if c.info.ViaGateway && c.info.HTTPRoute != "" {
		endpoint, method = c.info.HTTPRoute, c.info.HTTPMethod
	}
	base, tenant, now := c.eventBase(), c.tenant, c.at
	var out []event.Event
	emit := func(ev event.Event, err error) {
		if m.built(c, err) {
			out = append(out, ev)
		}
	}
	emit(billing.NewAPIRequest(billing.EventID(base, billing.TypeAPIRequest, 0), tenant, now, billing.APIRequest{
		Endpoint:   endpoint,
		Method:     method,
		StatusCode: interceptors.HTTPStatus(c.code),
		GRPCCode:   int(c.code),
		DurationMS: float64(c.d.Microseconds()) / 1000,
	}))
	// A call refused by quota records nothing: nothing else happened.
	for i, t := range c.tokens {
		emit(billing.NewLLMTokens(billing.EventID(base, billing.TypeLLMTokens, i), tenant, now, billing.LLMTokens{
			TokensIn: t.TokensIn, TokensOut: t.TokensOut, TokensTotal: t.TokensIn + t.TokensOut,
			Model: t.Model, SessionID: t.SessionID, Mode: t.Mode, Budget: t.Budget,
		}))
	}
	for i, inv := range c.invokes {
		emit(billing.NewAgenteseInvoke(billing.EventID(base, billing.TypeAgenteseInvoke, i), tenant, now, billing.AgenteseInvoke{
			Path: inv.Path, Aspect: inv.Aspect, TokensUsed: inv.TokensUsed,
		}))
	}
	creates, messages := 0, 0
	for _, s := range c.sessions {
		if s.Role == "" {
			emit(billing.NewSessionCreate(billing.EventID(base, billing.TypeSessionCreate, creates), tenant, now, billing.SessionCreate{
				SessionID: s.SessionID, AgentType: s.AgentType,
			}))
			creates++
			continue
		}
		emit(billing.NewSessionMessage(billing.EventID(base, billing.TypeSessionMessage, messages), tenant, now, billing.SessionMessage{
			SessionID: s.SessionID, Role: s.Role, MessageLength: s.MessageLength,
		}))
		messages++
	}
	return out
}

// built reports whether an event was built, counting and logging it if not.
func (m *Meter) built(c *call, err error) bool {
	if err != nil {
		m.failed.Inc()
		m.log.ErrorContext(c.ctx, "usage event could not be built", "error", err)
		return false
	}
	return true
}

// Async moves building and emitting usage events off the request path:
// PostCall queues the call's usage (up to queue calls) and one goroutine
// builds the CloudEvents and hands them to the Emitter: a call's events
// together with those of the calls that join it within BatchLinger (up to
// MaxBatchEvents), so under load one message carries dozens of calls'
// events (without the linger the builder kept up and batches averaged 1.75
// calls). When the queue is
// full the caller's goroutine builds its own events instead (slower, never
// lost; such events may overtake queued ones — order across calls carries
// no meaning), and so does a call that ends after Close. Close drains the
// queue and waits for callers already building; call it once the server
// has stopped and before the Emitter closes.
func (m *Meter) Async(queue int) *Meter {
	m.queue = make(chan *call, max(queue, 1))
	m.drained = make(chan struct{})
	go func() {
		defer close(m.drained)
		linger := time.NewTimer(BatchLinger)
		linger.Stop()
		for c := range m.queue {
			// A batch is what is queued behind its first call, then, if it
			// has room, what is queued once BatchLinger is over. The wait is
			// on the timer alone: calls queued meanwhile do not wake this
			// goroutine, so a batch costs one wake-up, not one per call (a
			// wake-up per call was most of metering's cost per call when
			// calls come one at a time, BenchmarkChainOverhead).
			events, open := m.takeQueued(m.buildEvents(c))
			if open && len(events) < MaxBatchEvents {
				linger.Reset(BatchLinger)
				<-linger.C
				events, _ = m.takeQueued(events)
			}
			if len(events) > 0 {
				m.emit.Emit(events)
			}
		}
	}()
	return m
}

// takeQueued appends the events of the calls queued now to events, up to
// MaxBatchEvents; open is false once the queue is closed and empty.
func (m *Meter) takeQueued(events []event.Event) (_ []event.Event, open bool) {
	for len(events) < MaxBatchEvents {
		select {
		case c, ok := <-m.queue:
			if !ok {
				return events, false
			}
			events = append(events, m.buildEvents(c)...)
		default:
			return events, true
		}
	}
	return events, true
}

// MaxBatchEvents bounds the events Async hands the Emitter at once (a
// message of about 50 KB); BatchLinger is how long a batch waits for more
// calls' events once its first call is taken.
const (
	MaxBatchEvents = 128
	BatchLinger    = time.Millisecond
)

func (m *Meter) dispatch(c *call) {
	if m.queue == nil {
		m.emitEvents(c)
		return
	}
	m.queueMu.RLock()
	if m.closed {
		m.queueMu.RUnlock()
		m.emitEvents(c) // a straggler after Close
		return
	}
	select {
	case m.queue <- c:
		m.queueMu.RUnlock()
		return
	default: // full: build here rather than wait or drop
	}
	m.inline.Add(1)
	m.queueMu.RUnlock()
	defer m.inline.Done()
	m.emitEvents(c)
}

// Close stops queueing and waits until every queued call's events are
// emitted, or ctx ends; then it stops the durable loop (Durable), removing
// the records of the calls that ended.
func (m *Meter) Close(ctx context.Context) error {
	if m.queue == nil {
		m.closeDurable(ctx)
		return nil
	}
	m.queueMu.Lock()
	if !m.closed {
		m.closed = true
		close(m.queue)
	}
	m.queueMu.Unlock()
	done := make(chan struct{})
	go func() {
		<-m.drained
		m.inline.Wait()
		close(done)
	}()
	select {
	case <-done:
		m.closeDurable(ctx)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
