package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ConsumerName is the durable pull consumer every replica's sink shares:
// JetStream hands each message to one fetcher, so replicas split the work
// without sending an event twice in normal operation.
const ConsumerName = "openmeter-sink"

// ensureTimeout bounds creating the stream and consumer.
const ensureTimeout = 5 * time.Second

// Processor defaults.
const (
	DefaultBatchSize       = 100
	DefaultFlushInterval   = time.Second
	DefaultAckWait         = 10 * time.Second
	DefaultBackoffBase     = 500 * time.Millisecond
	DefaultBackoffMax      = 5 * time.Second
	DefaultMaxRetryAfter   = time.Minute
	DefaultShutdownGrace   = 5 * time.Second
	DefaultBacklogInterval = 5 * time.Second
	DefaultConcurrency     = 2
)

// ProcessorConfig configures the OpenMeter sink. The first five fields are
// the OPENMETER_* variables; the rest have defaults fit for production.
type ProcessorConfig struct {
	// Enabled runs the sink (OPENMETER_ENABLED). When false the processor
	// does nothing and reports "disabled"; events stay in the stream.
	Enabled bool
	// BaseURL of OpenMeter, e.g. https://openmeter.cloud (OPENMETER_BASE_URL).
	BaseURL string
	// APIKey is sent as a bearer token (OPENMETER_API_KEY). It is never
	// logged. Empty sends no Authorization header (self-hosted, no auth).
	APIKey string
	// BatchSize is the most events per request (OPENMETER_BATCH_SIZE, 100).
	BatchSize int
	// FlushInterval is the longest a partial batch waits for more events
	// (OPENMETER_FLUSH_INTERVAL, 1 s).
	FlushInterval time.Duration

	// RequestTimeout bounds one ingestion request (10 s).
	RequestTimeout time.Duration
	// Replicas of the metering stream if Run has to create it (NATS_REPLICAS).
	Replicas int
	// AckWait is the consumer's redelivery timer (10 s): how long the
	// events a replica held when it died (kill -9, OOM, a lost connection)
	// wait before another replica gets them. Messages being worked on are
	// marked in progress every AckWait/4, also during a slow request.
	AckWait time.Duration
	// MaxAckPending bounds the events fetched and not yet acknowledged,
	// across replicas (default 20 batches, at least 1000).
	MaxAckPending int
	// Backoff after a server or network error: full jitter, exponential
	// from BackoffBase (500 ms) up to BackoffMax (5 s, below AckWait). The
	// failed batch is handed back with NakWithDelay(backoff) meanwhile.
	BackoffBase, BackoffMax time.Duration
	// MaxRetryAfter caps the wait a 429's Retry-After asks for (1 min).
	MaxRetryAfter time.Duration
	// ShutdownGrace is how long a request in flight may finish after Run's
	// context ends (5 s); after that its batch is released unacknowledged.
	ShutdownGrace time.Duration
	// BacklogInterval is how often the backlog is read from the consumer (5 s).
	BacklogInterval time.Duration
	// Concurrency is the number of batches in flight per process (2): one
	// is fetched and posted while the previous one is acknowledged.
	Concurrency int
	// ConfirmEveryAck confirms each event's ack with its own AckSync instead
	// of one AckSync per batch (see ack in deliver.go); noticeably slower.
	ConfirmEveryAck bool

	// HTTPClient posts the batches; nil means a client of its own.
	HTTPClient *http.Client
	// Logger; nil discards.
	Logger *slog.Logger
	// Registerer for the kgents_openmeter_* metrics; nil keeps them private.
	Registerer prometheus.Registerer
	// Tracer provider for the openmeter.flush spans; nil means none.
	Tracer trace.TracerProvider
}

// String describes the configuration without the API key, so that logging
// or printing it (%v, %+v) cannot disclose the key.
func (c ProcessorConfig) String() string {
	return fmt.Sprintf("{Enabled:%t BaseURL:%s APIKey:%s BatchSize:%d FlushInterval:%s RequestTimeout:%s AckWait:%s Concurrency:%d}",
		c.Enabled, c.BaseURL, redacted(c.APIKey), c.BatchSize, c.FlushInterval, c.RequestTimeout, c.AckWait, c.Concurrency)
}

// LogValue is String for slog.
func (c ProcessorConfig) LogValue() slog.Value { return slog.StringValue(c.String()) }

// GoString keeps %#v from printing the key too.
func (c ProcessorConfig) GoString() string { return "billing.ProcessorConfig" + c.String() }

func redacted(key string) string {
	if key == "" {
		return `""`
	}
	return "[REDACTED]"
}

// withDefaults fills the zero fields and checks the others.
func (c ProcessorConfig) withDefaults() (ProcessorConfig, error) {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	def(&c.FlushInterval, DefaultFlushInterval)
	def(&c.RequestTimeout, DefaultRequestTimeout)
	def(&c.AckWait, DefaultAckWait)
	def(&c.BackoffBase, DefaultBackoffBase)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.MaxRetryAfter, DefaultMaxRetryAfter)
	def(&c.ShutdownGrace, DefaultShutdownGrace)
	def(&c.BacklogInterval, DefaultBacklogInterval)
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = max(1000, 20*c.BatchSize)
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Tracer == nil {
		c.Tracer = noop.NewTracerProvider()
	}

	var errs []error
	bad := func(cond bool, format string, args ...any) {
		if cond {
			errs = append(errs, fmt.Errorf("billing: "+format, args...))
		}
	}
	bad(c.BatchSize < 1, "batch size %d must be at least 1", c.BatchSize)
	bad(c.Concurrency < 1, "concurrency %d must be at least 1", c.Concurrency)
	bad(c.FlushInterval < time.Millisecond, "flush interval %s is too short", c.FlushInterval)
	bad(c.AckWait < time.Second, "ack wait %s is below one second", c.AckWait)
	bad(c.RequestTimeout < 0 || c.BackoffBase < 0 || c.MaxRetryAfter < 0 || c.ShutdownGrace < 0 || c.BacklogInterval < 0,
		"durations must not be negative")
	bad(c.BackoffMax < c.BackoffBase, "backoff max %s is below backoff base %s", c.BackoffMax, c.BackoffBase)
	// A failed batch is handed back for the backoff, so the wait does not
	// race the redelivery timer; still, a backoff as long as the ack wait
	// would mean delivering later than a dead replica's events.
	bad(c.BackoffMax >= c.AckWait, "backoff max %s must be below the ack wait %s", c.BackoffMax, c.AckWait)
	bad(c.MaxAckPending < c.BatchSize*c.Concurrency, "max ack pending %d is below one batch per worker (%d)", c.MaxAckPending, c.BatchSize*c.Concurrency)
	return c, errors.Join(errs...)
}

// Health is the sink's state for /health/saas.
type Health struct {
	// "healthy", "unhealthy" (the last attempt failed) or "disabled".
	Status string `json:"status"`
	// Configured reports whether the sink is enabled.
	Configured bool `json:"configured"`
	// Backlog is the events not yet accepted by OpenMeter: pending in the
	// consumer plus delivered and awaiting ack (refreshed every BacklogInterval).
	Backlog int64 `json:"backlog"`
	// LastSuccess is when OpenMeter last accepted a batch.
	LastSuccess *time.Time `json:"last_success"`
	// LastError is the most recent failure (kept after recovery, for
	// diagnosis) and when it happened.
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
}

// Processor is the OpenMeter sink: it delivers the metering stream's events
// to OpenMeter in batches. Run it on every replica.
type Processor struct {
	js     jetstream.JetStream
	cfg    ProcessorConfig
	client *Client
	log    *slog.Logger
	tracer trace.Tracer
	m      *metrics

	running atomic.Bool
	backlog atomic.Int64
	// pauseUntil (Unix ns) holds every worker back after a 429: the rate
	// limit is OpenMeter's, not one batch's.
	pauseUntil atomic.Int64

	// handedBack are the messages nak'ed with a delay not yet passed: a
	// NATS server restart forgets those delays (and would redeliver them
	// only an ack wait after their delivery), so after a reconnect they are
	// nak'ed again (renak).
	backMu     sync.Mutex
	handedBack []heldBack
	reconnects atomic.Uint64
	renakDue   atomic.Bool

	mu          sync.Mutex
	failing     bool
	lastSuccess time.Time
	lastErr     string
	lastErrAt   time.Time
}

// NewProcessor checks cfg and builds a processor. It registers the metrics
// but touches neither NATS nor OpenMeter until Run.
func NewProcessor(js jetstream.JetStream, cfg ProcessorConfig) (*Processor, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("billing: metrics: %w", err)
	}
	p := &Processor{
		js:     js,
		cfg:    cfg,
		log:    cfg.Logger.With("component", "openmeter"),
		tracer: cfg.Tracer.Tracer("kgents.billing.openmeter"),
		m:      m,
	}
	if !cfg.Enabled {
		return p, nil
	}
	if js == nil {
		return nil, errors.New("billing: the OpenMeter sink needs JetStream (NATS_ENABLED)")
	}
	if p.client, err = NewClient(cfg.BaseURL, cfg.APIKey, cfg.RequestTimeout, cfg.HTTPClient); err != nil {
		return nil, fmt.Errorf("billing: OPENMETER_BASE_URL: %w", err)
	}
	return p, nil
}

// Run delivers events until ctx ends, then finishes or releases the batches
// in flight (within ShutdownGrace plus one FlushInterval) and returns nil.
// It retries everything that fails, so it returns an error only when misused.
// It creates the metering stream if it is missing; call EnsureStream at
// start-up, before Run, to bring an existing stream up to date.
func (p *Processor) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("billing: processor is already running")
	}
	defer p.running.Store(false)
	if !p.cfg.Enabled {
		<-ctx.Done()
		return nil
	}
	p.log.Info("openmeter sink starting", "endpoint", p.client.Endpoint(), "batch_size", p.cfg.BatchSize,
		"flush_interval", p.cfg.FlushInterval, "workers", p.cfg.Concurrency)
	cons, ok := p.setup(ctx)
	if !ok {
		return nil
	}
	// The first backlog reading comes before any fetch, so Health never
	// reports an empty backlog for a sink that has not looked yet.
	p.refreshBacklog(ctx, cons)
	var wg sync.WaitGroup
	wg.Go(func() { p.watchBacklog(ctx, cons) })
	for range p.cfg.Concurrency {
		wg.Go(func() { p.work(ctx, cons) })
	}
	wg.Wait()
	p.log.Info("openmeter sink stopped")
	return nil
}

// Health reports the sink's state; safe from any goroutine.
func (p *Processor) Health() Health {
	h := Health{Configured: p.cfg.Enabled, Backlog: p.backlog.Load(), Status: "disabled"}
	if !p.cfg.Enabled {
		return h
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	h.Status = "healthy"
	if p.failing {
		h.Status = "unhealthy"
	}
	if !p.lastSuccess.IsZero() {
		t := p.lastSuccess
		h.LastSuccess = &t
	}
	if p.lastErr != "" {
		t := p.lastErrAt
		h.LastError, h.LastErrorAt = p.lastErr, &t
	}
	return h
}

func (p *Processor) markSuccess() {
	p.mu.Lock()
	p.failing, p.lastSuccess = false, time.Now()
	p.mu.Unlock()
}

// markReachable clears the unhealthy state: OpenMeter answered, if only to
// reject a batch.
func (p *Processor) markReachable() {
	p.mu.Lock()
	p.failing = false
	p.mu.Unlock()
}

// markError records err; failing says whether it makes the sink unhealthy
// (a dead-lettered event does not: OpenMeter is working).
func (p *Processor) markError(err error, failing bool) {
	p.mu.Lock()
	p.lastErr, p.lastErrAt = err.Error(), time.Now()
	if failing {
		p.failing = true
	}
	p.mu.Unlock()
}

// consumerConfig is the shared durable consumer. Unlimited redelivery: an
// event is only ever removed from the sink's view by an ack, after OpenMeter
// accepted it or it was dead-lettered.
func (p *Processor) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "kgentsd: delivers usage events to OpenMeter",
		FilterSubject: EventSubjects,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       p.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: p.cfg.MaxAckPending,
	}
}

// setup ensures the stream (if missing) and the consumer, retrying until it works or ctx
// ends (NATS may be down when the process starts).
func (p *Processor) setup(ctx context.Context) (jetstream.Consumer, bool) {
	for attempt := 0; ; attempt++ {
		cons, err := p.ensureConsumer(ctx)
		if err == nil {
			return cons, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		p.markError(err, true)
		p.log.Warn("openmeter sink cannot set up its consumer; retrying", "error", err, "attempt", attempt+1)
		if !sleep(ctx, p.backoff(attempt)) {
			return nil, false
		}
	}
}

func (p *Processor) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, ensureTimeout)
	defer cancel()
	// Create the stream if it is missing, but leave updating it to
	// EnsureStream at start-up: a stream update racing a consumer creation
	// (two sinks starting together) trips a data race inside nats-server.
	_, err := p.js.Stream(ctx, StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = EnsureStream(ctx, p.js, p.cfg.Replicas)
	}
	if err != nil {
		return nil, fmt.Errorf("billing: metering stream: %w", err)
	}
	cons, err := p.js.CreateOrUpdateConsumer(ctx, StreamName, p.consumerConfig())
	if err != nil {
		return nil, fmt.Errorf("billing: ensure consumer %s: %w", ConsumerName, err)
	}
	return cons, nil
}

// watchBacklog keeps Health().Backlog and the buffered gauge current.
func (p *Processor) watchBacklog(ctx context.Context, cons jetstream.Consumer) {
	t := time.NewTicker(p.cfg.BacklogInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.refreshBacklog(ctx, cons)
	}
}

func (p *Processor) refreshBacklog(ctx context.Context, cons jetstream.Consumer) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := cons.Info(ctx)
	if err != nil {
		return // keep the last value; the NATS health says why
	}
	b := int64(info.NumPending) + int64(info.NumAckPending)
	p.backlog.Store(b)
	p.m.buffered.Set(float64(b))
}

// work is one fetch → post → ack loop. Several run at once, in this process
// and on other replicas, on the same consumer.
func (p *Processor) work(ctx context.Context, cons jetstream.Consumer) {
	nc := p.js.Conn()
	failures, streak := 0, 0
	for ctx.Err() == nil {
		if nc != nil {
			if r := nc.Stats().Reconnects; r != p.reconnects.Load() && p.reconnects.Swap(r) != r {
				p.renakDue.Store(true)
			}
		}
		// OpenMeter asked every worker to wait (429): do not fetch what
		// could not be sent.
		if !sleep(ctx, time.Until(time.Unix(0, p.pauseUntil.Load()))) {
			return
		}
		// A pull request buffered while disconnected would be answered
		// after the fetch gave up, leaving its messages unacknowledged until
		// the ack wait expires: wait for the connection instead.
		if nc != nil && !nc.IsConnected() {
			sleep(ctx, min(p.cfg.FlushInterval, 250*time.Millisecond))
			continue
		}
		msgs, err := p.fetch(cons)
		// After a reconnect, once JetStream answers again (its consumers
		// restored after a server restart), hand back again what the
		// server may have forgotten.
		if (err == nil || len(msgs) > 0) && nc != nil && p.renakDue.Swap(false) {
			p.renak(nc)
		}
		if len(msgs) > 0 {
			if ctx.Err() != nil {
				release(msgs)
				return
			}
			p.deliver(ctx, msgs, &streak)
		}
		if err != nil {
			failures++
			p.fetchFailed(ctx, err, failures)
		} else {
			failures = 0
		}
	}
}

// fetch waits up to FlushInterval for up to BatchSize messages.
func (p *Processor) fetch(cons jetstream.Consumer) ([]jetstream.Msg, error) {
	batch, err := cons.Fetch(p.cfg.BatchSize, jetstream.FetchMaxWait(p.cfg.FlushInterval))
	if err != nil {
		return nil, err
	}
	msgs := make([]jetstream.Msg, 0, p.cfg.BatchSize)
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	return msgs, batch.Error()
}

// fetchFailed backs off after a fetch error and, if the consumer or stream
// was lost (deleted by an operator, or a server that lost its store),
// creates them again. "No responders" is JetStream starting up: waiting is
// enough, unless it lasts.
func (p *Processor) fetchFailed(ctx context.Context, err error, failures int) {
	level := slog.LevelDebug
	if failures > 3 {
		level = slog.LevelWarn
	}
	p.log.Log(ctx, level, "openmeter sink fetch failed", "error", err, "failures", failures)
	lost := errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) ||
		errors.Is(err, jetstream.ErrStreamNotFound)
	if lost || failures%10 == 0 {
		if _, err := p.ensureConsumer(ctx); err != nil && ctx.Err() == nil {
			p.log.Warn("openmeter sink cannot restore its consumer", "error", err)
		}
	}
	sleep(ctx, p.backoff(failures-1))
}
