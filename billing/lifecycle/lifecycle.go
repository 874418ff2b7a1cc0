package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stripe/stripe-go/v85"
	"github.com/stripe/stripe-go/v85/webhook"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/kgents/kgents-go/streaming"
)

// Outbox is the durable metering publisher (*streaming.Publisher).
type Outbox interface {
	PublishDurable(ctx context.Context, m streaming.Message) error
}

// Options build a Lifecycle.
type Options struct {
	Config  Config
	Tenants Tenants
	// JetStream, when set, holds the webhook queue (stream kgent-stripe-events),
	// the subscription records and — unless Idempotency is given — the
	// idempotency bucket. Nil: memory (NATS disabled; one replica, not durable).
	JetStream jetstream.JetStream
	Replicas  int
	// Idempotency overrides the store (Redis with REDIS_URL).
	Idempotency Idempotency
	// Outbox receives the OpenMeter events; nil drops them (NATS disabled).
	Outbox Outbox
	// SweepEvery is how often the grace sweep runs (default min(1 min, grace/4), at least 1 s).
	SweepEvery time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Tracer     trace.TracerProvider
}

// Lifecycle is one replica's billing lifecycle.
type Lifecycle struct {
	cfg     Config
	client  *stripe.Client // nil while STRIPE_API_KEY is unset
	tenants Tenants
	queue   queue
	idem    Idempotency
	subs    Subscriptions
	outbox  Outbox
	sweep   time.Duration
	log     *slog.Logger
	tracer  trace.Tracer
	metrics *metrics
	stats   stats
	now     func() time.Time
}

type stats struct {
	received, applied, duplicate, ignored, failed, rejected atomic.Int64
	mu                                                      sync.Mutex
	lastError                                               string
	lastErrorAt, lastApplied                                time.Time
}

func (s *stats) fail(msg string) {
	s.mu.Lock()
	s.lastError, s.lastErrorAt = msg, time.Now().UTC()
	s.mu.Unlock()
}

// New builds the lifecycle. It makes no network call.
func New(o Options) (*Lifecycle, error) {
	if o.Tenants == nil {
		return nil, errors.New("lifecycle: Tenants is required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Tracer == nil {
		o.Tracer = tracenoop.NewTracerProvider()
	}
	if o.Config.Grace <= 0 {
		o.Config.Grace = 72 * time.Hour
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	l := &Lifecycle{
		cfg: o.Config, tenants: o.Tenants, outbox: o.Outbox, log: o.Logger,
		tracer: o.Tracer.Tracer("github.com/kgents/kgents-go/billing/lifecycle"), metrics: m, now: time.Now,
		idem: o.Idempotency,
	}
	if o.Config.APIKey != "" {
		l.client = newStripeClient(o.Config, o.Logger)
	}
	if o.JetStream != nil {
		l.queue = newJSQueue(o.JetStream, o.Replicas, o.Logger)
		l.subs = NewKVSubscriptions(o.JetStream, o.Replicas)
		if l.idem == nil {
			l.idem = NewKVIdempotency(o.JetStream, o.Replicas, IdempotencyTTL)
		}
	} else {
		l.queue = newMemQueue()
		l.subs = NewMemorySubscriptions()
		if l.idem == nil {
			l.idem = NewMemoryIdempotency(IdempotencyTTL)
		}
	}
	l.sweep = o.SweepEvery
	if l.sweep <= 0 {
		l.sweep = min(time.Minute, max(time.Second, o.Config.Grace/4))
	}
	return l, nil
}

// Enabled reports whether Checkout and Portal are available (STRIPE_API_KEY).
func (l *Lifecycle) Enabled() bool { return l.client != nil }

// WebhooksEnabled reports whether webhooks are accepted (STRIPE_WEBHOOK_SECRET).
func (l *Lifecycle) WebhooksEnabled() bool { return l.cfg.WebhookSecret != "" }

// Reconnected makes the next use re-create the stream (hook it to the
// NATS reconnect).
func (l *Lifecycle) Reconnected() {
	if q, ok := l.queue.(*jsQueue); ok {
		q.reset()
	}
}

// Run applies stored webhook events and runs the grace sweep until ctx ends.
func (l *Lifecycle) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		err := l.queue.Run(ctx, l.applyStored)
		if err != nil && ctx.Err() == nil {
			l.log.Error("Stripe webhook applier stopped", "error", err)
		}
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(l.sweep)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				l.SweepGrace(ctx)
			}
		}
	}()
	wg.Wait()
}

// SweepGrace suspends the tenants whose grace has ended (also done lazily
// at authentication: a past_due tenant past its grace is refused 402).
func (l *Lifecycle) SweepGrace(ctx context.Context) {
	done, err := l.tenants.SuspendExpiredGrace(ctx, l.now())
	for _, id := range done {
		l.log.Info("billing: grace ended; tenant suspended", "tenant", id)
		l.metrics.suspended.Inc()
	}
	if err != nil && ctx.Err() == nil {
		l.log.Warn("billing: grace sweep incomplete; retried on the next tick", "error", err)
	}
}

// ---- webhooks ----

// MaxWebhookBody bounds a webhook body (Stripe's are a few KiB).
const MaxWebhookBody = 512 << 10

// Tolerance is the signature timestamp tolerance.
const Tolerance = 300 * time.Second

// ServeWebhook is POST /webhooks/stripe: verify, store durably, answer 200.
func (l *Lifecycle) ServeWebhook(w http.ResponseWriter, r *http.Request) {
	ctx, span := l.tracer.Start(r.Context(), "stripe.webhook", trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	if l.cfg.WebhookSecret == "" {
		writeJSON(w, http.StatusNotImplemented, map[string]any{"detail": "Stripe webhooks are not configured: set STRIPE_WEBHOOK_SECRET", "code": "billing_not_configured"})
		return
	}
	sig := r.Header.Get("Stripe-Signature")
	if sig == "" {
		l.reject(w, span, "Missing Stripe-Signature header")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxWebhookBody))
	if err != nil {
		l.reject(w, span, "Invalid request body")
		return
	}
	ev, err := webhook.ConstructEventWithOptions(body, sig, l.cfg.WebhookSecret, webhook.ConstructEventOptions{
		Tolerance: Tolerance, IgnoreAPIVersionMismatch: true,
	})
	if err != nil {
		switch {
		case errors.Is(err, webhook.ErrNotSigned), errors.Is(err, webhook.ErrInvalidHeader):
			l.reject(w, span, "Invalid Stripe-Signature header")
		case errors.Is(err, webhook.ErrNoValidSignature), errors.Is(err, webhook.ErrTooOld):
			l.reject(w, span, "Invalid signature")
		default:
			l.reject(w, span, "Invalid payload")
		}
		return
	}
	if checkEventID(ev.ID) != nil || ev.Type == "" {
		l.reject(w, span, "Invalid payload")
		return
	}
	typ := string(ev.Type)
	span.SetAttributes(attribute.String("stripe.event_id", ev.ID), attribute.String("stripe.event_type", typ))
	if ev.APIVersion != stripe.APIVersion {
		l.log.Info("Stripe webhook API version differs from the SDK's; processed anyway", "event_version", ev.APIVersion, "sdk_version", stripe.APIVersion, "event_id", ev.ID)
	}
	dup, err := l.queue.Put(ctx, ev.ID, signatureTime(sig), typ, body)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "not stored")
		l.metrics.webhooks.WithLabelValues(typeLabel(typ), "unavailable").Inc()
		l.stats.fail("event " + ev.ID + " not stored: " + err.Error())
		l.log.Warn("Stripe webhook not stored; answering 503 so Stripe retries", "event_id", ev.ID, "type", typ, "error", err)
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"detail": "event not stored; retry", "code": "unavailable"})
		return
	}
	l.stats.received.Add(1)
	l.metrics.webhooks.WithLabelValues(typeLabel(typ), "received").Inc()
	if dup {
		l.stats.duplicate.Add(1)
		l.metrics.webhooks.WithLabelValues(typeLabel(typ), "duplicate").Inc()
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "received", "event_id": ev.ID, "event_type": typ})
}

// signatureTime is the t= of a verified Stripe-Signature header: Stripe
// signs each delivery of an event (its retries, a resend) anew, so it tells
// deliveries apart.
func signatureTime(header string) string {
	for _, part := range strings.Split(header, ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(part), "t="); ok {
			if _, err := strconv.ParseInt(v, 10, 64); err == nil {
				return v
			}
		}
	}
	return ""
}

func (l *Lifecycle) reject(w http.ResponseWriter, span trace.Span, msg string) {
	l.stats.rejected.Add(1)
	l.metrics.webhooks.WithLabelValues("unverified", "rejected").Inc()
	span.SetStatus(codes.Error, msg)
	writeJSON(w, http.StatusBadRequest, map[string]any{"detail": msg, "code": "invalid_webhook"})
}

// Health is GET /webhooks/stripe/health and the stripe component of
// /health/saas. Counts are this replica's since it started.
type Health struct {
	Configured        bool       `json:"configured"`
	WebhookConfigured bool       `json:"webhook_secret_configured"`
	Received          int64      `json:"received"`
	Applied           int64      `json:"applied"`
	Duplicate         int64      `json:"duplicate"`
	Ignored           int64      `json:"ignored"`
	Failed            int64      `json:"failed"`
	Rejected          int64      `json:"rejected"`
	LastError         *string    `json:"last_error"`
	LastErrorAt       *time.Time `json:"last_error_at"`
	LastApplied       *time.Time `json:"last_applied"`
}

// Configured reports whether checkouts and portal sessions can be made
// (STRIPE_API_KEY is set).
func (l *Lifecycle) Configured() bool { return l.client != nil }

// Health reports the counters.
func (l *Lifecycle) Health() Health {
	h := Health{
		Configured: l.client != nil, WebhookConfigured: l.cfg.WebhookSecret != "",
		Received: l.stats.received.Load(), Applied: l.stats.applied.Load(), Duplicate: l.stats.duplicate.Load(),
		Ignored: l.stats.ignored.Load(), Failed: l.stats.failed.Load(), Rejected: l.stats.rejected.Load(),
	}
	l.stats.mu.Lock()
	defer l.stats.mu.Unlock()
	if l.stats.lastError != "" {
		e, at := l.stats.lastError, l.stats.lastErrorAt
		h.LastError, h.LastErrorAt = &e, &at
	}
	if !l.stats.lastApplied.IsZero() {
		at := l.stats.lastApplied
		h.LastApplied = &at
	}
	return h
}

// ServeHealth is GET /webhooks/stripe/health.
func (l *Lifecycle) ServeHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, l.Health())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		b = []byte(`{"detail":"internal error"}`)
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// ---- metrics ----

type metrics struct {
	webhooks    *prometheus.CounterVec
	calls       *prometheus.CounterVec
	callLatency *prometheus.HistogramVec
	suspended   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kgents_stripe_webhooks_total",
			Help: "Stripe webhook events by type and outcome (received, duplicate, applied, ignored, stale, unhandled, failed, rejected, unavailable).",
		}, []string{"type", "outcome"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kgents_stripe_api_calls_total", Help: "Stripe API calls by call and outcome (ok, error).",
		}, []string{"call", "outcome"}),
		callLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kgents_stripe_api_call_duration_seconds", Help: "Duration of Stripe API calls.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20},
		}, []string{"call"}),
		suspended: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kgents_billing_suspensions_total", Help: "Tenants suspended by the grace sweep on this replica.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.webhooks, m.calls, m.callLatency, m.suspended} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("lifecycle metrics: %w", err)
			}
		}
	}
	return m, nil
}

// typeLabel bounds the type label to the handled types.
func typeLabel(t string) string {
	switch t {
	case typeCheckoutCompleted, typeSubCreated, typeSubUpdated, typeSubDeleted, typeInvoicePaid, typeInvoiceFailed:
		return t
	}
	return "other"
}
