package streaming

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Message is one JetStream write.
type Message struct {
	Subject string
	Data    []byte
	// MsgID is sent as Nats-Msg-Id; JetStream drops a second message with the
	// same id inside the stream's duplicate window. Required, and it must be
	// unique per logical message: never reuse one for different content.
	MsgID string
	// Header holds optional extra headers (not Nats-Msg-Id), e.g.
	// Nats-Expected-Last-Subject-Sequence for a compare-and-set KV put.
	Header map[string]string
}

// PublisherOptions configure NewPublisher. Zero values take the defaults.
type PublisherOptions struct {
	// SpoolDir holds the local spool (created 0700). Required unless NATS is disabled.
	SpoolDir string
	// MaxInFlight bounds unacknowledged JetStream publishes (default 1024);
	// it is also the replay window.
	MaxInFlight int
	// QueueSize bounds messages waiting in memory for a publish slot
	// (default 8192). When it is full, messages go to the spool instead of
	// blocking the caller.
	QueueSize int
	// AckTimeout is how long a publish waits for its JetStream ack (default 5s).
	AckTimeout time.Duration
	// Circuit breaker: BreakerFailures consecutive failures (default 5) open
	// it for BreakerOpen (default 30s); BreakerHalfOpenSuccesses consecutive
	// successes (default 3) close it.
	BreakerFailures          int
	BreakerOpen              time.Duration
	BreakerHalfOpenSuccesses int
	// SyncInterval is the spool's group-commit interval (default 5ms): one
	// fsync covers everything appended during it.
	SyncInterval time.Duration
	// SpoolSegmentBytes is the size at which a spool segment is sealed and a
	// new one started (default 16 MiB).
	SpoolSegmentBytes int64
	// SpoolMaxBytes caps the spool on disk; 0 means no cap (the disk is).
	SpoolMaxBytes int64
	Logger        *slog.Logger
	// Registerer receives the kgents_nats_* metrics (nil: a private registry).
	Registerer prometheus.Registerer
	// Tracer provides the tracer for nats.publish spans (nil: no tracing).
	Tracer trace.TracerProvider
}

func (o PublisherOptions) withDefaults() PublisherOptions {
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 1024
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 8192
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 5 * time.Second
	}
	if o.BreakerFailures <= 0 {
		o.BreakerFailures = 5
	}
	if o.BreakerOpen <= 0 {
		o.BreakerOpen = 30 * time.Second
	}
	if o.BreakerHalfOpenSuccesses <= 0 {
		o.BreakerHalfOpenSuccesses = 3
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = 5 * time.Millisecond
	}
	if o.SpoolSegmentBytes <= 0 {
		o.SpoolSegmentBytes = defaultSegBytes
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Tracer == nil {
		o.Tracer = noop.NewTracerProvider()
	}
	return o
}

// Errors returned by PublishDurable.
var (
	ErrPublisherClosed = errors.New("nats publisher: closed")
	ErrInvalidMessage  = errors.New("nats publisher: invalid message")
	// ErrRejected wraps a JetStream error that retrying cannot fix (for
	// example a wrong expected last sequence, or a message over the stream's
	// size limit). The message is kept in the spool's rejected.seg.
	ErrRejected = errors.New("nats publisher: rejected by JetStream")
)

// Publisher health states and modes (GET /health/saas → nats).
const (
	PublisherHealthy      = "healthy"
	PublisherDisconnected = "disconnected"
	PublisherCircuitOpen  = "circuit_open"
	PublisherDisabled     = "disabled"

	ModeJetStream = "jetstream"
	ModeFallback  = "fallback"
)

// PublisherHealth is the publisher's state for /health/saas.
type PublisherHealth struct {
	// State is healthy, disconnected, circuit_open (the breaker is open) or disabled.
	State string `json:"status"`
	// Mode is jetstream (new messages go straight to JetStream) or fallback
	// (they go to the spool: disconnected, breaker open, or an older backlog
	// is still being replayed).
	Mode    string        `json:"mode"`
	Breaker BreakerHealth `json:"breaker"`
	// SpoolDepth is the number of messages in the spool not yet acknowledged by JetStream.
	SpoolDepth int64 `json:"spool_depth"`
	// SpoolBytes is the size of the spool's segment files on disk.
	SpoolBytes int64 `json:"spool_bytes"`
	// InFlight counts publishes waiting for their JetStream ack.
	InFlight int `json:"in_flight"`
	// Queued counts messages waiting in memory for a publish slot.
	Queued int `json:"queued"`
	// Replaying is true while the spool is being replayed to JetStream.
	Replaying bool `json:"replaying"`
	// Dropped counts messages neither stored nor spooled (see kgents_nats_messages_dropped_total).
	Dropped uint64 `json:"dropped,omitempty"`
	// SpoolError is the last spool write/fsync error, if the last attempt failed.
	SpoolError string `json:"spool_error,omitempty"`
}

// Publisher is kgentsd's single, ordered, durable way to write to JetStream
// (SPEC §4.9). It is one FIFO: while JetStream is reachable and the circuit
// breaker closed, messages are published asynchronously with a bounded
// number in flight; when NATS is disconnected, the breaker is open, an ack
// fails or the in-memory queue overflows, they go to a local fsynced spool,
// and every later message follows them there until the spool has been
// replayed, in order, to JetStream. Safe for concurrent use.
type Publisher struct {
	conn     *Conn
	nc       *nats.Conn // the publisher's own connection (see Conn.dial)
	js       jetstream.JetStream
	o        PublisherOptions
	log      *slog.Logger
	met      *pubMetrics
	tracer   trace.Tracer
	br       *breaker
	disabled bool

	mu         sync.Mutex
	closed     bool // Close called: no new messages
	stopped    bool // goroutines stopped, spool closed
	spooling   bool // new messages go to the spool
	mem        fifo[*rec]
	inflight   fifo[*rec] // direct publishes awaiting their ack, in send order
	connEpoch  uint64     // bumped on every disconnect
	epoch      uint64     // Flush barrier generation
	pending    map[uint64]int
	resolvedCh chan struct{}
	failures   uint64 // accepted messages that ended neither acked nor durably spooled
	dropped    uint64
	sp         *spool
	batch      syncBatch
	skip       map[uint64]struct{} // spool seqs already acked directly
	head       spoolPos            // replay position: everything before it is acked
	depth      int64
	replaying  bool
	spoolErr   string

	replayInflight atomic.Int64
	fsyncs         atomic.Uint64 // group commits done
	incompatible   atomic.Bool   // connected server is older than MinServerVersion
	wasDown        atomic.Bool   // disconnected since the last connect
	lastHead       time.Time
	reader         spoolReader

	dispatchWake chan struct{}
	replayWake   chan struct{}
	syncWake     chan struct{}
	syncNow      chan struct{}
	notifyWake   chan struct{}
	collectCh    chan *rec
	stop         chan struct{}
	ready        chan struct{} // closed when NewPublisher is done: connection callbacks wait for it
	wg           sync.WaitGroup
	syncMu       sync.Mutex
	closeOnce    sync.Once

	hookMu sync.Mutex
	hooks  []func(PublisherHealth)

	logLimit  atomic.Int64 // unix ns of the last rate-limited log line
	spanLimit atomic.Int64
}

// rec is a message on the direct path (or a PublishDurable waiter).
type rec struct {
	m       Message
	epoch   uint64
	durable chan error // PublishDurable's result; nil for Publish
	how     string     // how it was resolved: acked, spooled, error

	resolved    bool
	spooled     bool // a copy is in the spool
	spoolFailed bool
	spoolSeq    uint64

	brDone    func(error)
	connEpoch uint64
	fut       jetstream.PubAckFuture
	sendErr   error
}

type epochCount struct {
	epoch uint64
	n     int
}

// syncBatch is what the next fsync makes durable.
type syncBatch struct {
	counts []epochCount // Publish records: counted per Flush epoch
	recs   []*rec       // records with a waiter, or copies of direct publishes
}

func (b *syncBatch) empty() bool { return len(b.counts) == 0 && len(b.recs) == 0 }

func (b *syncBatch) addCount(epoch uint64) {
	if l := len(b.counts); l > 0 && b.counts[l-1].epoch == epoch {
		b.counts[l-1].n++
		return
	}
	b.counts = append(b.counts, epochCount{epoch: epoch, n: 1})
}

// fifo is a slice-backed queue.
type fifo[T any] struct {
	buf  []T
	head int
}

func (q *fifo[T]) len() int   { return len(q.buf) - q.head }
func (q *fifo[T]) push(v T)   { q.buf = append(q.buf, v) }
func (q *fifo[T]) peek() T    { return q.buf[q.head] }
func (q *fifo[T]) at(i int) T { return q.buf[q.head+i] }
func (q *fifo[T]) pop() T {
	v := q.buf[q.head]
	var zero T
	q.buf[q.head] = zero
	q.head++
	switch {
	case q.head == len(q.buf):
		q.buf, q.head = q.buf[:0], 0
	case q.head >= 1024 && q.head*2 >= len(q.buf):
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	return v
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// NewPublisher starts a publisher on conn. With NATS disabled (conn nil or
// NATS_ENABLED=false) it is a no-op: Publish drops, PublishDurable returns
// nil, Health says disabled; there is nothing to replay to, and the
// in-process hub serves same-replica watchers.
//
// An existing spool in o.SpoolDir (left by a crash or by a shutdown during an
// outage) is recovered — a torn final record is truncated away — and
// replayed as soon as JetStream is reachable, before any new message.
func NewPublisher(conn *Conn, o PublisherOptions) (*Publisher, error) {
	o = o.withDefaults()
	met, err := newPubMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("nats publisher metrics: %w", err)
	}
	p := &Publisher{
		conn:         conn,
		o:            o,
		log:          o.Logger.With("component", "nats-publisher"),
		met:          met,
		tracer:       o.Tracer.Tracer("kgents.streaming.nats"),
		pending:      map[uint64]int{},
		resolvedCh:   make(chan struct{}),
		skip:         map[uint64]struct{}{},
		dispatchWake: make(chan struct{}, 1),
		replayWake:   make(chan struct{}, 1),
		syncWake:     make(chan struct{}, 1),
		syncNow:      make(chan struct{}, 1),
		notifyWake:   make(chan struct{}, 1),
		stop:         make(chan struct{}),
		ready:        make(chan struct{}),
	}
	defer close(p.ready)
	p.br = newBreaker(o.BreakerFailures, o.BreakerOpen, o.BreakerHalfOpenSuccesses, p.breakerChanged)
	met.circuit.Set(0)
	if conn == nil || !conn.Enabled() || conn.NATS() == nil {
		p.disabled = true
		return p, nil
	}
	if o.SpoolDir == "" {
		return nil, errors.New("nats publisher: SpoolDir is required")
	}
	p.nc, err = conn.dial(
		nats.Name(conn.nc.Opts.Name+"-publisher"),
		// No reconnect buffer: see Conn.dial.
		nats.ReconnectBufSize(-1),
		nats.ConnectHandler(func(*nats.Conn) { p.onConnect() }),
		nats.ReconnectHandler(func(*nats.Conn) { p.onConnect() }),
		nats.DisconnectErrHandler(func(*nats.Conn, error) { p.onDisconnect() }),
	)
	if err != nil {
		return nil, fmt.Errorf("nats publisher: connect: %w", err)
	}
	p.js, err = jetstream.New(p.nc,
		jetstream.WithPublishAsyncTimeout(o.AckTimeout),
		jetstream.WithPublishAsyncMaxPending(2*o.MaxInFlight+64))
	if err != nil {
		p.nc.Close()
		return nil, fmt.Errorf("nats publisher: %w", err)
	}
	sp, rcv, err := openSpool(o.SpoolDir, o.SpoolSegmentBytes, o.SpoolMaxBytes, p.log)
	if err != nil {
		p.nc.Close()
		return nil, fmt.Errorf("nats publisher: %w", err)
	}
	p.sp = sp
	p.head = rcv.head
	p.depth = rcv.records
	p.reader.seek(p.head)
	if rcv.records > 0 || len(sp.segs) > 0 {
		p.log.Info("nats spool recovered", "dir", o.SpoolDir, "messages", rcv.records, "bytes", sp.total, "discarded_bytes", rcv.discarded)
	}
	p.checkVersion()
	p.spooling = rcv.records > 0 || !p.connected()
	p.collectCh = make(chan *rec, o.MaxInFlight+1)
	p.updateSpoolGauges()

	p.wg.Add(5)
	go p.dispatchLoop()
	go p.collectLoop()
	go p.syncLoop()
	go p.replayLoop()
	go p.notifyLoop()
	// A disconnect from now on is handled by the callback (it waits for ready).
	wake(p.replayWake)
	return p, nil
}

// connected reports whether the publisher's connection is up (and the
// server recent enough).
func (p *Publisher) connected() bool {
	return p.nc.IsConnected() && !p.incompatible.Load()
}

func (p *Publisher) checkVersion() {
	v := p.nc.ConnectedServerVersion()
	p.incompatible.Store(v != "" && !versionAtLeast(v, MinServerVersion))
}

// validate checks m before it is accepted.
func (p *Publisher) validate(m *Message) error {
	bad := func(what string) error { return fmt.Errorf("%w: %s", ErrInvalidMessage, what) }
	switch {
	case m.Subject == "" || len(m.Subject) > 0xffff || strings.ContainsAny(m.Subject, " \t\r\n*>"):
		return bad("subject must be a non-empty literal subject")
	case m.MsgID == "" || len(m.MsgID) > 0xffff || strings.ContainsAny(m.MsgID, "\r\n"):
		return bad("msg id is required (Nats-Msg-Id)")
	case len(m.Header) > 0xffff:
		return bad("too many headers")
	}
	for k, v := range m.Header {
		if k == "" || len(k) > 0xffff || strings.ContainsAny(k, ": \t\r\n") || strings.ContainsAny(v, "\r\n") {
			return bad("invalid header " + k)
		}
		if strings.EqualFold(k, jetstream.MsgIDHeader) {
			return bad("set the msg id with Message.MsgID, not a header")
		}
	}
	if mp := p.nc.MaxPayload(); mp > 0 && int64(len(m.Data)) > mp {
		return bad(fmt.Sprintf("%d bytes is over the server's max payload of %d", len(m.Data), mp))
	}
	return nil
}

func (m *Message) natsMsg() *nats.Msg {
	h := make(nats.Header, 1+len(m.Header))
	for k, v := range m.Header {
		h[k] = []string{v}
	}
	h[jetstream.MsgIDHeader] = []string{m.MsgID}
	return &nats.Msg{Subject: m.Subject, Data: m.Data, Header: h}
}

// Publish hands m to the publisher and returns at once: it goes to JetStream
// or, if that is not possible now, to the spool. It never blocks on the
// network; in spool mode it costs one write(2) (no fsync wait). m.Data must
// not be modified afterwards. Failures that lose the message (invalid
// message, spool write failure, after Close) are logged and counted in
// kgents_nats_messages_dropped_total.
func (p *Publisher) Publish(m Message) {
	if p.disabled {
		return
	}
	_ = p.accept(m, nil)
}

// PublishDurable returns once m is acknowledged by JetStream or fsynced in
// the local spool (from where it is replayed later). It returns an error if
// neither is possible (invalid message, spool write failure, ErrRejected)
// or ctx ends first — in that case m may still be published. With ctx
// already done on entry, m is not published at all.
func (p *Publisher) PublishDurable(ctx context.Context, m Message) error {
	if p.disabled {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ctx, span := p.tracer.Start(ctx, "nats.publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", m.Subject),
			attribute.String("messaging.message.id", m.MsgID),
			attribute.String("kgents.subject_type", subjectType(m.Subject)),
		))
	defer span.End()
	r := &rec{m: m, durable: make(chan error, 1)}
	if err := p.accept(m, r); err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		return err
	}
	select {
	case err := <-r.durable:
		p.mu.Lock()
		how := r.how
		p.mu.Unlock()
		span.SetAttributes(attribute.String("kgents.outcome", how))
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		return err
	case <-ctx.Done():
		span.SetStatus(codes.Error, "context done before ack or fsync")
		return ctx.Err()
	}
}

// accept queues m (r is its waiter for PublishDurable, or nil).
func (p *Publisher) accept(m Message, r *rec) error {
	if err := p.validate(&m); err != nil {
		p.drop(dropInvalid, &m, err)
		return err
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.drop(dropClosed, &m, ErrPublisherClosed)
		return ErrPublisherClosed
	}
	e := p.epoch
	p.pending[e]++
	if !p.spooling && p.mem.len() >= p.o.QueueSize {
		p.switchToSpoolLocked("in-memory queue full")
	}
	if !p.spooling {
		if r == nil {
			r = &rec{m: m}
		}
		r.epoch = e
		p.mem.push(r)
		p.mu.Unlock()
		wake(p.dispatchWake)
		return nil
	}
	if r != nil {
		r.epoch = e
	}
	_, err := p.spoolLocked(&m, r, e)
	if err != nil {
		if r != nil {
			p.resolveLocked(r, err, "error")
		} else {
			p.failures++
			p.doneCountLocked(e, 1)
		}
		p.dropped++
		p.mu.Unlock()
		p.met.dropped.WithLabelValues(dropSpool).Inc()
		p.logLimited("nats publisher: message lost: cannot write the spool", "subject_type", subjectType(m.Subject), "msg_id", m.MsgID, "error", err)
		if r != nil {
			return nil // the error is delivered on r.durable
		}
		return err
	}
	p.mu.Unlock()
	return nil
}

// spoolLocked appends m to the spool. r (may be nil) is resolved when the
// record is fsynced; without r the record is counted for Flush.
func (p *Publisher) spoolLocked(m *Message, r *rec, epoch uint64) (uint64, error) {
	seq := p.sp.nextSeq
	if err := p.sp.append(seq, time.Now().UnixNano(), m); err != nil {
		p.spoolErr = err.Error()
		p.met.spoolErrs.Inc()
		return 0, err
	}
	p.spoolErr = ""
	p.sp.nextSeq++
	p.depth++
	if p.batch.empty() {
		wake(p.syncWake)
	}
	if r != nil {
		p.batch.recs = append(p.batch.recs, r)
	} else {
		p.batch.addCount(epoch)
	}
	p.updateSpoolGaugesLocked()
	return seq, nil
}

func (p *Publisher) updateSpoolGauges() {
	p.mu.Lock()
	p.updateSpoolGaugesLocked()
	p.mu.Unlock()
}

func (p *Publisher) updateSpoolGaugesLocked() {
	p.met.depth.Set(float64(p.depth))
	if p.sp != nil {
		p.met.bytes.Set(float64(p.sp.total))
	}
}

// switchToSpoolLocked sends everything not yet acknowledged to the spool,
// in order: the direct publishes still awaiting their ack (their outcome is
// unknown; if one is acked later its spool copy is skipped on replay, and
// JetStream dedupes it by msg id if the replay happens first), then the
// in-memory queue. From now on new messages go to the spool too, until the
// replay has caught up.
func (p *Publisher) switchToSpoolLocked(reason string) {
	if !p.spooling {
		p.spooling = true
		p.log.Info("nats publisher: spooling", "reason", reason, "in_flight", p.inflight.len(), "queued", p.mem.len())
		wake(p.notifyWake)
	}
	for i := 0; i < p.inflight.len(); i++ {
		r := p.inflight.at(i)
		if r.spooled || r.spoolFailed || r.resolved {
			continue
		}
		seq, err := p.spoolLocked(&r.m, r, r.epoch)
		if err != nil {
			r.spoolFailed = true
			continue
		}
		r.spooled, r.spoolSeq = true, seq
	}
	for p.mem.len() > 0 {
		r := p.mem.pop()
		if _, err := p.spoolLocked(&r.m, r, r.epoch); err != nil {
			p.resolveLocked(r, err, "error")
			p.dropped++
			p.met.dropped.WithLabelValues(dropSpool).Inc()
			p.logLimited("nats publisher: message lost: cannot write the spool", "subject_type", subjectType(r.m.Subject), "msg_id", r.m.MsgID, "error", err)
		}
	}
	wake(p.replayWake)
}

// resolveLocked settles r once: acked, durably spooled, or failed.
func (p *Publisher) resolveLocked(r *rec, err error, how string) {
	if r.resolved {
		return
	}
	r.resolved = true
	r.how = how
	if err != nil {
		p.failures++
	}
	p.doneCountLocked(r.epoch, 1)
	if r.durable != nil {
		r.durable <- err
	}
}

func (p *Publisher) doneCountLocked(epoch uint64, n int) {
	c := p.pending[epoch] - n
	if c > 0 {
		p.pending[epoch] = c
		return
	}
	delete(p.pending, epoch)
	if epoch < p.epoch {
		close(p.resolvedCh)
		p.resolvedCh = make(chan struct{})
	}
}

func (p *Publisher) drop(reason string, m *Message, err error) {
	p.met.dropped.WithLabelValues(reason).Inc()
	p.mu.Lock()
	p.dropped++
	p.mu.Unlock()
	p.logLimited("nats publisher: message dropped", "reason", reason, "subject_type", subjectType(m.Subject), "msg_id", m.MsgID, "error", err)
}

// logLimited logs at most one line per second (errors during an outage or
// with a full disk would otherwise flood the log).
func (p *Publisher) logLimited(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := p.logLimit.Load()
	if now-last < int64(time.Second) || !p.logLimit.CompareAndSwap(last, now) {
		return
	}
	p.log.Error(msg, args...)
}

// ---- direct path ----

func (p *Publisher) dispatchLoop() {
	defer p.wg.Done()
	for {
		select {
		case <-p.stop:
			return
		case <-p.dispatchWake:
		}
		p.dispatch()
	}
}

// dispatch sends queued messages while there is room in flight.
func (p *Publisher) dispatch() {
	for {
		p.mu.Lock()
		idle := p.spooling || p.mem.len() == 0 || p.inflight.len() >= p.o.MaxInFlight
		p.mu.Unlock()
		if idle {
			return
		}
		if !p.connected() {
			p.mu.Lock()
			p.switchToSpoolLocked("nats disconnected")
			p.mu.Unlock()
			return
		}
		done, err := p.br.allow()
		if errors.Is(err, gobreaker.ErrTooManyRequests) {
			return // half-open: wait for the probes' acks
		}
		p.mu.Lock()
		if err != nil {
			p.switchToSpoolLocked("circuit breaker open")
			p.mu.Unlock()
			return
		}
		if p.spooling || p.mem.len() == 0 {
			p.mu.Unlock()
			done(errExcluded)
			return
		}
		r := p.mem.pop()
		r.brDone = done
		r.connEpoch = p.connEpoch
		p.inflight.push(r)
		p.mu.Unlock()

		r.fut, r.sendErr = p.js.PublishMsgAsync(r.m.natsMsg(), noClientRetry)
		select {
		case p.collectCh <- r:
		case <-p.stop:
			return
		}
	}
}

func (p *Publisher) collectLoop() {
	defer p.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case r := <-p.collectCh:
			ack, err, stopped := p.waitAck(t, r.fut, r.sendErr)
			if stopped {
				return
			}
			p.finishDirect(r, ack, err)
		}
	}
}

// noClientRetry turns off nats.go's own retry of an async publish that met
// "no responders" (it re-sends 250ms later, behind our back). A message
// re-sent that way can overtake the ones spooled after it and land out of
// order; the spool's replay is the only retry path, and it keeps order.
var noClientRetry = jetstream.WithRetryAttempts(0)

var errAckTimeout = errors.New("nats publisher: no JetStream ack in time")

// waitAck waits for a publish's outcome (t is a reusable, stopped timer).
func (p *Publisher) waitAck(t *time.Timer, fut jetstream.PubAckFuture, sendErr error) (*jetstream.PubAck, error, bool) {
	if sendErr != nil {
		return nil, sendErr, false
	}
	// nats.go times the ack out itself (WithPublishAsyncTimeout); this timer
	// is only a backstop.
	t.Reset(p.o.AckTimeout + time.Second)
	defer t.Stop()
	select {
	case ack := <-fut.Ok():
		return ack, nil, false
	case err := <-fut.Err():
		return nil, err, false
	case <-t.C:
		return nil, errAckTimeout, false
	case <-p.stop:
		return nil, nil, true
	}
}

type outcome int

const (
	outOK           outcome = iota
	outFailed               // JetStream did not take it: counts for the breaker, retry from the spool
	outDisconnected         // the connection went away: retry from the spool, not counted
	outRejected             // refused for good: never retried
)

func (p *Publisher) classify(err error, connEpoch uint64) outcome {
	if err == nil {
		return outOK
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.Code == 400 || apiErr.Code == 413) {
		return outRejected
	}
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrBadSubject) ||
		errors.Is(err, nats.ErrHeadersNotSupported) || errors.Is(err, nats.ErrBadHeaderMsg) {
		return outRejected
	}
	if errors.Is(err, nats.ErrDisconnected) || errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrReconnectBufExceeded) ||
		errors.Is(err, nats.ErrConnectionDraining) {
		return outDisconnected
	}
	p.mu.Lock()
	moved := p.connEpoch != connEpoch
	p.mu.Unlock()
	if moved || !p.connected() {
		return outDisconnected
	}
	return outFailed
}

// report tells the breaker and the metrics how a publish attempt went.
func (p *Publisher) report(done func(error), out outcome, ack *jetstream.PubAck, subject string, err error) {
	if done != nil {
		switch out {
		case outOK:
			done(nil)
		case outFailed:
			done(err)
		default:
			done(fmt.Errorf("%w: %w", errExcluded, err))
		}
	}
	switch {
	case out != outOK:
		p.met.errors.Inc()
	case ack != nil && ack.Duplicate:
		p.met.duplicates.Inc()
	default:
		p.met.publishedInc(subject)
	}
}

func (p *Publisher) finishDirect(r *rec, ack *jetstream.PubAck, err error) {
	out := p.classify(err, r.connEpoch)
	p.report(r.brDone, out, ack, r.m.Subject, err)
	r.brDone = nil
	if out == outFailed || out == outRejected {
		p.errorSpan(&r.m, err, out)
	}
	p.mu.Lock()
	switch out {
	case outOK:
		if r.spooled {
			p.skip[r.spoolSeq] = struct{}{}
		}
		p.resolveLocked(r, nil, "acked")
	case outRejected:
		if r.spooled {
			p.skip[r.spoolSeq] = struct{}{}
		}
		p.rejectLocked(&r.m, err)
		p.resolveLocked(r, fmt.Errorf("%w: %w", ErrRejected, err), "error")
	default:
		if !r.spooled && !r.spoolFailed {
			// r is still at the head of inflight, so it is spooled first.
			p.switchToSpoolLocked(fmt.Sprintf("publish failed: %v", err))
		}
		if r.spoolFailed {
			p.resolveLocked(r, err, "error")
			p.dropped++
			p.met.dropped.WithLabelValues(dropSpool).Inc()
		}
		// Otherwise r resolves when its spool copy is fsynced.
	}
	if p.inflight.len() > 0 && p.inflight.peek() == r {
		p.inflight.pop()
	}
	empty := p.inflight.len() == 0
	spooling := p.spooling
	p.mu.Unlock()
	if empty && spooling {
		wake(p.replayWake)
	}
	wake(p.dispatchWake)
}

// rejectLocked keeps a message JetStream refused for good in rejected.seg.
func (p *Publisher) rejectLocked(m *Message, err error) {
	p.dropped++
	p.met.dropped.WithLabelValues(dropRejected).Inc()
	p.log.Error("nats publisher: JetStream rejected a message; kept in the spool's rejected.seg",
		"subject_type", subjectType(m.Subject), "msg_id", m.MsgID, "error", err)
	if p.sp != nil {
		if werr := p.sp.reject(0, time.Now().UnixNano(), m); werr != nil {
			p.log.Error("nats publisher: cannot keep the rejected message", "error", werr)
		}
	}
}

// errorSpan records a failed fire-and-forget publish as a span. Successful
// ones get no span (see docs: a span per message costs more than the
// publish); failures are sampled to one span per second.
func (p *Publisher) errorSpan(m *Message, err error, out outcome) {
	now := time.Now().UnixNano()
	last := p.spanLimit.Load()
	if now-last < int64(time.Second) || !p.spanLimit.CompareAndSwap(last, now) {
		return
	}
	_, span := p.tracer.Start(context.Background(), "nats.publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("kgents.subject_type", subjectType(m.Subject)),
			attribute.Bool("kgents.rejected", out == outRejected),
		))
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.End()
}

// ---- connection and breaker events ----

func (p *Publisher) onDisconnect() {
	<-p.ready
	p.mu.Lock()
	if p.sp == nil || p.stopped {
		p.mu.Unlock()
		return
	}
	p.connEpoch++
	p.switchToSpoolLocked("nats disconnected")
	p.mu.Unlock()
	p.wasDown.Store(true)
	wake(p.notifyWake)
}

func (p *Publisher) onConnect() {
	<-p.ready
	if p.sp == nil {
		return // NewPublisher failed
	}
	select {
	case <-p.stop:
		return
	default:
	}
	p.checkVersion()
	if p.wasDown.Swap(false) {
		// SPEC §4.9: a reconnect moves the breaker straight to half-open.
		p.br.reconnect()
	}
	wake(p.replayWake)
	wake(p.dispatchWake)
	wake(p.notifyWake)
}

// breakerChanged runs under the breaker's lock: no blocking, no p.mu.
func (p *Publisher) breakerChanged(from, to gobreaker.State) {
	p.met.circuit.Set(stateGauge(to))
	p.log.Info("nats publish circuit breaker", "from", stateName(from), "to", stateName(to))
	if to == gobreaker.StateOpen {
		time.AfterFunc(p.o.BreakerOpen+5*time.Millisecond, func() {
			_ = p.br.state() // moves it to half-open
			wake(p.replayWake)
			wake(p.dispatchWake)
		})
	}
	wake(p.replayWake)
	wake(p.notifyWake)
}

// ---- flush, close, health ----

// Flush waits until every message accepted before the call is acknowledged
// by JetStream or fsynced in the spool. It returns ctx's error if ctx ends
// first, or an error if some of those messages were lost (spool write or
// fsync failure).
func (p *Publisher) Flush(ctx context.Context) error {
	if p.disabled {
		return nil
	}
	p.mu.Lock()
	e := p.epoch
	p.epoch++
	f0 := p.failures
	p.mu.Unlock()
	wake(p.syncNow)
	wake(p.dispatchWake)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		p.mu.Lock()
		done := true
		for ep := range p.pending {
			if ep <= e {
				done = false
				break
			}
		}
		ch := p.resolvedCh
		failed := p.failures - f0
		p.mu.Unlock()
		if done {
			if failed > 0 {
				return fmt.Errorf("nats publisher: %d message(s) could be neither published nor spooled", failed)
			}
			return nil
		}
		select {
		case <-ch:
		case <-tick.C:
			wake(p.syncNow)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close flushes (see Flush), then, while JetStream is reachable, waits for
// the spool to drain until ctx ends, then stops the publisher and closes the
// spool. If ctx ends before everything is acknowledged, what is left is
// written to the spool and fsynced (it is replayed by the next start), so a
// nil error means nothing accepted was lost. Publishing after Close fails.
func (p *Publisher) Close(ctx context.Context) error {
	if p.disabled {
		return nil
	}
	var err error
	p.closeOnce.Do(func() { err = p.close(ctx) })
	return err
}

func (p *Publisher) close(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	f0 := p.failures
	p.mu.Unlock()
	if err := p.Flush(ctx); err != nil && ctx.Err() == nil {
		p.log.Error("nats publisher: flush at close", "error", err)
	}
	p.waitDrain(ctx)
	close(p.stop)
	p.wg.Wait()

	// Whatever is not acknowledged by now goes to the spool, fsynced below.
	p.mu.Lock()
	if p.inflight.len() > 0 || p.mem.len() > 0 {
		p.switchToSpoolLocked("shutdown")
	}
	p.mu.Unlock()
	p.syncOnce()

	p.mu.Lock()
	p.stopped = true
	if p.depth > 0 {
		if err := p.sp.writeHead(p.head); err != nil {
			p.log.Warn("nats spool: cannot write the replay checkpoint", "error", err)
		}
		p.log.Warn("nats publisher closed with messages in the spool; they are replayed at the next start",
			"messages", p.depth, "bytes", p.sp.total, "dir", p.o.SpoolDir)
	}
	p.reader.closeFile()
	p.sp.close()
	lost := p.failures - f0
	p.mu.Unlock()
	p.nc.Close()
	if lost > 0 {
		return fmt.Errorf("nats publisher: %d message(s) could be neither published nor spooled", lost)
	}
	return nil
}

// waitDrain waits, while replay can make progress, for the spool to empty.
func (p *Publisher) waitDrain(ctx context.Context) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		p.mu.Lock()
		busy := p.spooling && p.depth > 0
		p.mu.Unlock()
		if !busy || !p.connected() || p.br.state() == gobreaker.StateOpen {
			return
		}
		wake(p.replayWake)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// Health reports the publisher's state.
func (p *Publisher) Health() PublisherHealth {
	if p.disabled {
		return PublisherHealth{State: PublisherDisabled, Mode: ModeFallback, Breaker: p.br.health()}
	}
	h := PublisherHealth{Breaker: p.br.health()}
	connected := p.connected()
	p.mu.Lock()
	spooling := p.spooling
	h.SpoolDepth = p.depth
	h.SpoolBytes = p.sp.total
	h.InFlight = p.inflight.len() + int(p.replayInflight.Load())
	h.Queued = p.mem.len()
	h.Replaying = p.replaying
	h.Dropped = p.dropped
	h.SpoolError = p.spoolErr
	p.mu.Unlock()
	switch {
	case !connected:
		h.State = PublisherDisconnected
	case h.Breaker.State == "open":
		h.State = PublisherCircuitOpen
	default:
		h.State = PublisherHealthy
	}
	h.Mode = ModeJetStream
	if spooling || h.State != PublisherHealthy {
		h.Mode = ModeFallback
	}
	return h
}

// OnStateChange registers fn to be called (on the publisher's own
// goroutine, one call at a time) when the health's state, mode, breaker
// state or replaying flag changes.
func (p *Publisher) OnStateChange(fn func(PublisherHealth)) {
	p.hookMu.Lock()
	p.hooks = append(p.hooks, fn)
	p.hookMu.Unlock()
}

func (p *Publisher) notifyLoop() {
	defer p.wg.Done()
	last := p.Health()
	for {
		select {
		case <-p.stop:
			return
		case <-p.notifyWake:
		}
		h := p.Health()
		if h.State == last.State && h.Mode == last.Mode && h.Breaker.State == last.Breaker.State && h.Replaying == last.Replaying {
			continue
		}
		last = h
		p.hookMu.Lock()
		hooks := slices.Clone(p.hooks)
		p.hookMu.Unlock()
		for _, fn := range hooks {
			fn(h)
		}
	}
}

// ---- group commit ----

func (p *Publisher) syncLoop() {
	defer p.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-p.syncNow:
		case <-p.syncWake:
			// Let more appends join this commit.
			t.Reset(p.o.SyncInterval)
			select {
			case <-t.C:
			case <-p.syncNow:
				t.Stop()
			case <-p.stop:
				t.Stop()
				return
			}
		}
		p.syncOnce()
	}
}

// syncOnce fsyncs everything appended so far and resolves its waiters.
func (p *Publisher) syncOnce() {
	p.syncMu.Lock()
	defer p.syncMu.Unlock()
	p.mu.Lock()
	b := p.batch
	p.batch = syncBatch{}
	files := p.sp.pendingClose
	p.sp.pendingClose = nil
	active := p.sp.active
	dirDirty := p.sp.dirDirty
	p.sp.dirDirty = false
	p.mu.Unlock()
	if b.empty() && len(files) == 0 && !dirDirty {
		return
	}
	var err error
	for _, f := range files {
		if e := f.Sync(); e != nil && err == nil {
			err = e
		}
		_ = f.Close()
	}
	if active != nil && !b.empty() {
		p.fsyncs.Add(1)
		if e := active.Sync(); e != nil && err == nil {
			err = e
		}
	}
	if dirDirty {
		if e := syncDir(p.o.SpoolDir); e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		err = fmt.Errorf("spool fsync: %w", err)
		p.met.spoolErrs.Inc()
		p.log.Error("nats spool: fsync failed", "error", err)
	}
	p.mu.Lock()
	if err != nil {
		p.spoolErr = err.Error()
	}
	p.resolveBatchLocked(&b, err)
	p.mu.Unlock()
}

func (p *Publisher) resolveBatchLocked(b *syncBatch, err error) {
	for _, c := range b.counts {
		if err != nil {
			p.failures += uint64(c.n)
		}
		p.doneCountLocked(c.epoch, c.n)
	}
	how := "spooled"
	if err != nil {
		how = "error"
	}
	for _, r := range b.recs {
		p.resolveLocked(r, err, how)
	}
}
