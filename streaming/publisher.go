package streaming

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// The durable publisher (SPEC §4.9) is one ordered FIFO with two ways out:
// the direct path (asynchronous JetStream publishes, a bounded number in
// flight) and the spool (an fsynced local log, replayed to JetStream in
// order). Its state is cut into parts, one file each, and every part owns
// its state; a part's lock guards exactly the fields listed for it:
//
//	part              file                 lock                owns
//	routing, API      publisher.go         Publisher.mu        closed, stopped, spooling, the direct queue
//	                                                           (directPath.mem, .inflight) and each rec's
//	                                                           spooled, spoolFailed, spoolSeq
//	direct path       publisher_direct.go  (Publisher.mu)      the dispatch and collect goroutines, acks,
//	                                                           breaker reporting
//	spool             publisher_spool.go   spoolLog.mu         the segment files (spool.go), head, depth,
//	                                                           skip, the group-commit batch, the last error
//	replay            replay.go            none                reader, checkpoint time: replay goroutine only;
//	                                                           in-flight count, replaying flag: atomics
//	group commit      publisher_commit.go  groupCommit.syncMu  one fsync round at a time; fsync count (atomic)
//	flush accounting  publisher_flush.go   flushes.mu          Flush epochs, pending counts, failures, each
//	                                                           rec's resolved and how
//	health            publisher_health.go  healthState.mu      state-change hooks; dropped count and log/span
//	                                                           rate limits (atomics)
//	connection        publisher_conn.go    none                connection epoch, wasDown, incompatible (atomics)
//
// Invariants, and why some state shares a lock:
//
//   - Order. An accepted message goes either to the direct queue or to the
//     spool; which one (spooling) changes only under Publisher.mu, in the
//     same step as the queue. switchToSpoolLocked appends, in order, every
//     in-flight message not yet spooled, then the whole in-memory queue, and
//     sets spooling; tryFinishReplay clears spooling only when nothing is in
//     flight and the spool has nothing after its head. Every append to the
//     spool happens under Publisher.mu, so nothing can be appended between
//     that check and the switch, and no message overtakes another. That is
//     why the direct queue has no lock of its own.
//   - Durability. A record joins the group-commit batch in the spoolLog.mu
//     section that writes it, and a group commit takes the batch together
//     with the files to fsync (active segment, sealed segments, directory)
//     in one spoolLog.mu section, so the fsync it then does covers every
//     record of the batch it resolves. That is why the batch lives in
//     spoolLog, not in groupCommit.
//   - Replay position. head, depth and skip move together under spoolLog.mu:
//     every record before head is acknowledged, depth counts the records at
//     or after it, skip holds the seqs after it already acknowledged on the
//     direct path.
//   - One resolution per message. A rec is resolved once (acked, spooled or
//     failed) under flushes.mu, in the same step as its Flush epoch's
//     count, so a direct ack and the fsync of its spool copy may race: the
//     first wins, the second is a no-op.
//
// Lock order. Only two locks are ever held while another is taken, and
// only in this direction:
//
//	Publisher.mu       → spoolLog.mu, flushes.mu
//	groupCommit.syncMu → spoolLog.mu, flushes.mu
//
// spoolLog.mu, flushes.mu and healthState.mu are leaves: no other publisher
// lock is taken while one of them is held. groupCommit.syncMu is never taken with
// Publisher.mu held (Close runs its last group commit after unlocking). The
// circuit breaker's lock is never held together with ours: every call into
// the breaker is made with no publisher lock held, and its onChange callback
// (breakerChanged) takes none. Neither are nats.go's: publishes, connection
// checks and its callbacks run with no publisher lock held.
//
// Goroutines (each stops when Publisher.stop is closed; Close waits for
// them): dispatch and collect (direct path), sync (group commit), replay,
// and notify (health). They are woken through 1-slot channels (wake), so a
// wake-up is never lost and never blocks the waker.

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
	// Resolve, when set, settles a spooled message JetStream refuses at
	// replay (a wrong expected last sequence: its place was taken while it
	// waited in the spool), after the write-once duplicate check. It returns
	// nil when the message's effect is stored (written another way, or no
	// longer needed), an error wrapping ErrUnsettled to retry it later from
	// the spool, or any other error to keep it in rejected.seg. It runs on
	// the replay goroutine, in spool order (later records may already be
	// on the wire), with a context bounded by ResolveTimeout.
	Resolve func(ctx context.Context, m *Message, refused error) error
}

// ResolveTimeout bounds one call of PublisherOptions.Resolve.
const ResolveTimeout = 10 * time.Second

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
	// size limit). A PublishDurable caller that receives it owns the
	// message; a refused message nobody is waiting for (Publish, or a
	// replayed one the Resolve hook cannot settle) is kept in the spool's
	// rejected.seg and counted as dropped.
	ErrRejected = errors.New("nats publisher: rejected by JetStream")
	// ErrUnsettled is wrapped by a PublisherOptions.Resolve error that a
	// later attempt may fix (JetStream unreachable): the message stays in
	// the spool.
	ErrUnsettled = errors.New("nats publisher: refusal not settled yet")
)

// Publisher is kgentsd's single, ordered, durable way to write to JetStream
// (SPEC §4.9). It is one FIFO: while JetStream is reachable and the circuit
// breaker closed, messages are published asynchronously with a bounded
// number in flight; when NATS is disconnected, the breaker is open, an ack
// fails or the in-memory queue overflows, they go to a local fsynced spool,
// and every later message follows them there until the spool has been
// replayed, in order, to JetStream. Safe for concurrent use.
type Publisher struct {
	// Set by NewPublisher, read-only afterwards.
	conn     *Conn
	nc       *nats.Conn // the publisher's own connection (see Conn.dial)
	js       jetstream.JetStream
	o        PublisherOptions
	log      *slog.Logger
	met      *pubMetrics
	tracer   trace.Tracer
	br       *breaker
	disabled bool

	// mu is the routing lock, the outermost (see the comment at the top).
	mu       sync.Mutex
	closed   bool       // Close called: no new messages
	stopped  bool       // goroutines stopped, spool closed
	spooling bool       // new messages go to the spool
	direct   directPath // its queue is guarded by mu

	// The other parts, each owning its state.
	link   link         // publisher_conn.go
	sp     *spoolLog    // publisher_spool.go; nil when disabled
	replay replayer     // replay.go
	commit *groupCommit // publisher_commit.go; nil when disabled
	flush  *flushes     // publisher_flush.go
	health healthState  // publisher_health.go

	stop      chan struct{}
	life      context.Context // ends with stop: bounds the replay's own reads and Resolve calls
	endLife   context.CancelFunc
	ready     chan struct{} // closed when NewPublisher is done: connection callbacks wait for it
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// rec is a message on the direct path (or a PublishDurable waiter). m,
// durable and epoch are set before the rec is shared and never change. (The
// bools are last, together, to keep the struct in its 160-byte size class.)
type rec struct {
	m       Message
	epoch   uint64
	durable chan error // PublishDurable's result; nil for Publish

	how string // flushes.mu: how it was resolved: acked, spooled, error

	spoolSeq uint64 // Publisher.mu

	// Set by dispatch before the rec is handed to collect, then collect's.
	brDone    func(error)
	connEpoch uint64
	fut       jetstream.PubAckFuture
	sendErr   error

	resolved    bool // flushes.mu
	spooled     bool // Publisher.mu: a copy is in the spool
	spoolFailed bool // Publisher.mu
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

// wake signals a goroutine waiting on ch (a 1-slot channel) without blocking.
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
		conn:   conn,
		o:      o,
		log:    o.Logger.With("component", "nats-publisher"),
		met:    met,
		tracer: o.Tracer.Tracer("kgents.streaming.nats"),
		direct: directPath{wake: make(chan struct{}, 1)},
		replay: replayer{wake: make(chan struct{}, 1)},
		flush:  newFlushes(),
		health: healthState{wake: make(chan struct{}, 1)},
		stop:   make(chan struct{}),
		ready:  make(chan struct{}),
	}
	p.life, p.endLife = context.WithCancel(context.Background())
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
	files, rcv, err := openSpool(o.SpoolDir, o.SpoolSegmentBytes, o.SpoolMaxBytes, p.log)
	if err != nil {
		p.nc.Close()
		return nil, fmt.Errorf("nats publisher: %w", err)
	}
	commitWake := make(chan struct{}, 1)
	p.sp = newSpoolLog(files, rcv, met, commitWake)
	p.commit = newGroupCommit(p.sp, p.flush, commitWake, o.SpoolDir, o.SyncInterval, met, p.log)
	p.replay.reader.seek(rcv.head)
	if rcv.records > 0 || len(files.segs) > 0 {
		p.log.Info("nats spool recovered", "dir", o.SpoolDir, "messages", rcv.records, "bytes", files.total, "discarded_bytes", rcv.discarded)
	}
	p.checkVersion()
	p.spooling = rcv.records > 0 || !p.connected()
	p.direct.sent = make(chan *rec, o.MaxInFlight+1)
	p.sp.updateGauges()

	p.wg.Go(p.dispatchLoop)
	p.wg.Go(p.collectLoop)
	p.wg.Go(func() { p.commit.run(p.stop) })
	p.wg.Go(p.replayLoop)
	p.wg.Go(p.notifyLoop)
	// A disconnect from now on is handled by the callback (it waits for ready).
	wake(p.replay.wake)
	return p, nil
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
		// r.how was set, once, before the result was sent: the receive orders it.
		span.SetAttributes(attribute.String("kgents.outcome", r.how))
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

// accept queues m (r is its waiter for PublishDurable, or nil): routing.
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
	e := p.flush.begin()
	if !p.spooling && p.direct.mem.len() >= p.o.QueueSize {
		p.switchToSpoolLocked("in-memory queue full")
	}
	if !p.spooling {
		if r == nil {
			r = &rec{m: m}
		}
		r.epoch = e
		p.direct.mem.push(r)
		p.mu.Unlock()
		wake(p.direct.wake)
		return nil
	}
	if r != nil {
		r.epoch = e
	}
	_, err := p.sp.append(&m, r, e)
	if err != nil {
		if r != nil {
			p.flush.settle(r, err, "error")
		} else {
			p.flush.done(e, 1, true)
		}
		p.health.dropped.Add(1)
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

// switchToSpoolLocked sends everything not yet acknowledged to the spool,
// in order: the direct publishes still awaiting their ack (their outcome is
// unknown; if one is acked later its spool copy is skipped on replay, and
// JetStream dedupes it by msg id if the replay happens first), then the
// in-memory queue. From now on new messages go to the spool too, until the
// replay has caught up. p.mu held.
func (p *Publisher) switchToSpoolLocked(reason string) {
	if !p.spooling {
		p.spooling = true
		p.log.Info("nats publisher: spooling", "reason", reason, "in_flight", p.direct.inflight.len(), "queued", p.direct.mem.len())
		wake(p.health.wake)
	}
	for i := 0; i < p.direct.inflight.len(); i++ {
		r := p.direct.inflight.at(i)
		if r.spooled || r.spoolFailed || p.flush.settled(r) {
			continue
		}
		seq, err := p.sp.append(&r.m, r, r.epoch)
		if err != nil {
			r.spoolFailed = true
			continue
		}
		r.spooled, r.spoolSeq = true, seq
	}
	for p.direct.mem.len() > 0 {
		r := p.direct.mem.pop()
		if _, err := p.sp.append(&r.m, r, r.epoch); err != nil {
			p.flush.settle(r, err, "error")
			p.health.dropped.Add(1)
			p.met.dropped.WithLabelValues(dropSpool).Inc()
			p.logLimited("nats publisher: message lost: cannot write the spool", "subject_type", subjectType(r.m.Subject), "msg_id", r.m.MsgID, "error", err)
		}
	}
	wake(p.replay.wake)
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
	f0 := p.flush.failed()
	p.mu.Unlock()
	if err := p.Flush(ctx); err != nil && ctx.Err() == nil {
		p.log.Error("nats publisher: flush at close", "error", err)
	}
	p.waitDrain(ctx)
	p.halt()
	p.wg.Wait()

	// Whatever is not acknowledged by now goes to the spool, fsynced below.
	p.mu.Lock()
	if p.direct.inflight.len() > 0 || p.direct.mem.len() > 0 {
		p.switchToSpoolLocked("shutdown")
	}
	p.mu.Unlock()
	p.commit.syncOnce()

	p.mu.Lock()
	p.stopped = true
	if depth, bytes, _ := p.sp.stats(); depth > 0 {
		if err := p.sp.writeHead(p.sp.position()); err != nil {
			p.log.Warn("nats spool: cannot write the replay checkpoint", "error", err)
		}
		p.log.Warn("nats publisher closed with messages in the spool; they are replayed at the next start",
			"messages", depth, "bytes", bytes, "dir", p.o.SpoolDir)
	}
	p.replay.reader.closeFile()
	p.sp.close()
	lost := p.flush.failed() - f0
	p.mu.Unlock()
	p.nc.Close()
	if lost > 0 {
		return fmt.Errorf("nats publisher: %d message(s) could be neither published nor spooled", lost)
	}
	return nil
}

// halt tells the publisher's goroutines to stop, ending a Resolve or a
// check the replay is waiting on: what it was settling stays in the spool.
func (p *Publisher) halt() {
	close(p.stop)
	p.endLife()
}

// waitDrain waits, while replay can make progress, for the spool to empty.
func (p *Publisher) waitDrain(ctx context.Context) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		p.mu.Lock()
		busy := p.spooling && p.sp.pending() > 0
		p.mu.Unlock()
		if !busy || !p.connected() || p.br.state() == stateOpen {
			return
		}
		wake(p.replay.wake)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
