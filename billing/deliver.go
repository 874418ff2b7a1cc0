package billing

// Delivery of one fetched batch: decode, post, split on rejection, wait on
// failure, acknowledge on acceptance, dead-letter what cannot be delivered.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Headers of a dead letter (besides Nats-Msg-Id = "dead-" + event id).
const (
	// HeaderDeadReason is OpenMeter's error text, or why the payload is not
	// a valid CloudEvent.
	HeaderDeadReason = "Kgents-Dead-Reason"
	// HeaderDeadStatus is the HTTP status OpenMeter answered (absent for
	// payloads that were never sent).
	HeaderDeadStatus = "Kgents-Dead-Status"
	// HeaderOriginalSubject is the subject the event was published to.
	HeaderOriginalSubject = "Kgents-Original-Subject"
)

const (
	// ackTimeout bounds the confirmation of the acks of one batch.
	ackTimeout = 5 * time.Second
	// ackParallelism bounds the confirmed acks in flight per batch: acks are
	// request/reply, and one at a time they would cap throughput.
	ackParallelism = 64
	// publishTimeout bounds a dead-letter publish.
	publishTimeout = 5 * time.Second
)

// item is one event of a fetched message (a batch message gives several).
type item struct {
	src  *source
	data []byte // the event's CloudEvent JSON
	id   string // CloudEvent id ("" if the payload has none)
	typ  string // CloudEvent type, or the subject's suffix
}

// source is a fetched message and the state of its events: it is
// acknowledged once every one of them is accepted or dead-lettered, and
// handed back (once) if any of them must be retried. One worker owns it.
type source struct {
	msg      jetstream.Msg
	left     int  // events neither accepted nor dead-lettered yet
	released bool // handed back: never acknowledged by this delivery
	acked    bool
}

// resolve counts one of src's events as done (accepted or dead-lettered)
// and reports whether the message can now be acknowledged.
func (s *source) resolve() bool {
	s.left--
	return s.left == 0 && !s.released && !s.acked
}

// deliver sends one fetched batch. Its messages are marked in progress
// while this worker holds them (a slow request, a split); a batch OpenMeter
// did not take is handed back with a delay instead of being held through
// the backoff (see send). streak counts this worker's consecutive failed
// requests, for the backoff. deliver returns once the batch is acknowledged
// or handed back and the worker has waited out the backoff.
func (p *Processor) deliver(ctx context.Context, msgs []jetstream.Msg, streak *int) {
	stop := p.keepAlive(msgs)
	items := make([]item, 0, len(msgs))
	var toAck []*source
	for _, m := range msgs {
		got, err := decode(m)
		if err != nil {
			// Not even a batch we can split: the message as a whole.
			src := &source{msg: m, left: 1}
			p.deadLetter(ctx, item{src: src, data: m.Data(), typ: strings.TrimPrefix(m.Subject(), EventSubjectPrefix)}, err.Error(), 0, &toAck)
			continue
		}
		for _, it := range got {
			if it.err != nil {
				p.deadLetter(ctx, it.item, it.err.Error(), 0, &toAck)
				continue
			}
			items = append(items, it.item)
		}
	}
	p.ackSources(ctx, toAck)
	var wait time.Duration
	if len(items) > 0 {
		wait = p.send(ctx, items, 0, streak)
	}
	stop()
	sleep(ctx, wait)
}

// decoded is one event of a message, or why it cannot be sent.
type decoded struct {
	item
	err error
}

// decode splits a message into its events and checks that each is a
// structured JSON CloudEvent 1.0 that OpenMeter can take, since its bytes
// are copied into the batch as they are. The error is for a message that
// cannot be split at all.
func decode(m jetstream.Msg) ([]decoded, error) {
	events, err := SplitMessage(m.Subject(), m.Data())
	if err != nil {
		return nil, err
	}
	src := &source{msg: m, left: len(events)}
	if len(events) == 0 {
		return nil, errors.New("batch holds no event")
	}
	out := make([]decoded, len(events))
	for i, data := range events {
		out[i].item = item{src: src, data: data, typ: strings.TrimPrefix(m.Subject(), EventSubjectPrefix)}
		out[i].err = decodeEvent(&out[i].item)
	}
	return out, nil
}

// decodeEvent fills it's id and type from its CloudEvent, checking it.
func decodeEvent(it *item) error {
	if !json.Valid(it.data) {
		return errors.New("payload is not JSON")
	}
	var ev event.Event
	if err := ev.UnmarshalJSON(it.data); err != nil {
		return fmt.Errorf("payload is not a CloudEvent: %w", err)
	}
	it.id = ev.ID()
	if ev.Type() != "" {
		it.typ = ev.Type()
	}
	return validate(&ev)
}

// send posts items once, acknowledging them if OpenMeter accepts them. A
// rejected batch is split in halves until the rejected events are alone;
// those are dead-lettered. A batch that failed otherwise (5xx, 429, network,
// timeout) is handed back to the consumer with NakWithDelay(backoff): the
// events are redelivered — to this worker or any other, on any replica —
// once the backoff has passed, and meanwhile nothing is held here, so a
// replica killed during an outage leaves nothing waiting for the ack wait.
// send returns how long the worker should wait before fetching again (the
// backoff; 0 after a success). When ctx ends the items are released at once.
func (p *Processor) send(ctx context.Context, items []item, depth int, streak *int) time.Duration {
	if !sleep(ctx, time.Until(time.Unix(0, p.pauseUntil.Load()))) {
		p.giveBack(items, 0)
		return 0
	}
	err := p.post(ctx, items, *streak, depth)
	if err == nil {
		*streak = 0
		p.markSuccess()
		p.ack(ctx, items)
		return 0
	}
	if ctx.Err() != nil {
		// Shutting down: the request was cut short, or its answer
		// does not matter any more.
		p.giveBack(items, 0)
		return 0
	}
	var ie *IngestError
	if !errors.As(err, &ie) {
		ie = &IngestError{Kind: KindNetwork, Detail: err.Error()}
	}
	p.m.flushErrors[ie.Kind].Inc()
	if ie.Kind == KindBadBatch {
		return p.rejected(ctx, items, ie, depth, streak)
	}
	p.markError(err, true)
	wait := p.retryWait(ie, *streak)
	*streak++
	if ie.Kind == KindRateLimited {
		p.pause(wait)
	}
	p.giveBack(items, wait)
	p.log.Warn("openmeter ingestion failed; the batch is handed back for a retry", "reason", ie.Kind, "status", ie.Status,
		"error", err, "events", len(items), "attempt", *streak, "retry_in", wait)
	return wait
}

// rejected handles a 400/413/422: OpenMeter is working, but some event (or
// the batch's size) is not acceptable. OpenMeter's batches are not atomic,
// so the halves may repeat events it already took; it dedupes them by id.
func (p *Processor) rejected(ctx context.Context, items []item, ie *IngestError, depth int, streak *int) time.Duration {
	p.markReachable()
	*streak = 0
	if len(items) == 1 {
		var toAck []*source
		p.deadLetter(ctx, items[0], ie.Error(), ie.Status, &toAck)
		p.ackSources(ctx, toAck)
		return 0
	}
	p.log.Info("openmeter rejected a batch; splitting it to isolate the bad events", "events", len(items),
		"status", ie.Status, "error", ie.Error())
	half := len(items) / 2
	w1 := p.send(ctx, items[:half], depth+1, streak)
	w2 := p.send(ctx, items[half:], depth+1, streak)
	return max(w1, w2)
}

// pause holds every worker back for d.
func (p *Processor) pause(d time.Duration) {
	until := time.Now().Add(d).UnixNano()
	for {
		cur := p.pauseUntil.Load()
		if cur >= until || p.pauseUntil.CompareAndSwap(cur, until) {
			return
		}
	}
}

// retryWait is how long to wait before resending after ie.
func (p *Processor) retryWait(ie *IngestError, attempt int) time.Duration {
	if ie.Kind != KindRateLimited || ie.RetryAfter <= 0 {
		return p.backoff(attempt)
	}
	d := min(ie.RetryAfter, p.cfg.MaxRetryAfter)
	// Spread the replicas that were all told the same instant.
	return d + rand.N(d/10+1)
}

// backoff is exponential with full jitter: uniform in [0, min(max, base·2^n)].
func (p *Processor) backoff(attempt int) time.Duration {
	ceil := p.cfg.BackoffMax
	if attempt < 30 {
		ceil = min(ceil, p.cfg.BackoffBase<<attempt)
	}
	if ceil <= 0 {
		return 0
	}
	return rand.N(ceil + 1)
}

// post sends one batch in a span "openmeter.flush". The request is detached
// from ctx so that a shutdown lets it finish within ShutdownGrace.
func (p *Processor) post(ctx context.Context, items []item, attempt, depth int) error {
	rctx, cancel := p.graceContext(ctx, p.cfg.RequestTimeout)
	defer cancel()
	rctx, span := p.tracer.Start(rctx, "openmeter.flush", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.Int("openmeter.event_count", len(items)),
			attribute.Int("openmeter.attempt", attempt+1),
			attribute.Int("openmeter.split_depth", depth),
		))
	defer span.End()

	body := batchBody(items)
	start := time.Now()
	err := p.client.Ingest(rctx, body)
	p.m.latency.Observe(time.Since(start).Seconds())

	outcome := "ok"
	var ie *IngestError
	if errors.As(err, &ie) {
		outcome = string(ie.Kind)
		if ie.Status != 0 {
			span.SetAttributes(attribute.Int("http.response.status_code", ie.Status))
		}
	}
	span.SetAttributes(attribute.String("openmeter.outcome", outcome))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

func batchBody(items []item) []byte {
	events := make([][]byte, len(items))
	for i, it := range items {
		events[i] = it.data
	}
	return BatchBody(events)
}

// graceContext outlives ctx by ShutdownGrace, and lasts at most timeout:
// work that was started (a request OpenMeter may be accepting, the acks of
// an accepted batch) gets a short chance to finish on shutdown.
func (p *Processor) graceContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(p.cfg.ShutdownGrace, cancel) })
	return gctx, func() {
		stop()
		cancel()
	}
}

// ack acknowledges accepted items and has JetStream confirm it: an ack
// that is confirmed is what keeps an accepted event from being sent again.
//
// By default the acks of a batch are published in order and only the last
// is a request (AckSync): JetStream processes a consumer's acks from one
// connection in arrival order, so the reply to the last one confirms the
// batch for one round trip instead of one per event (BenchmarkPipeline on a
// shared 2-core machine: 19-28k events/s confirming every ack, 27-52k
// confirming the batch). If that confirmation
// fails, or with ConfirmEveryAck, every ack is confirmed by its own AckSync
// (acking again is harmless). Unconfirmed acks (NATS restarting, a lost
// reply) are retried for up to half the ack wait; what stays unconfirmed is
// redelivered later, resent, and deduplicated by id.
func (p *Processor) ack(ctx context.Context, items []item) {
	var done []*source
	for _, it := range items {
		p.m.sent[typeLabel(it.typ)].Inc()
		if it.src.resolve() {
			done = append(done, it.src)
		}
	}
	p.ackSources(ctx, done)
}

// ackSources acknowledges messages whose events are all done.
func (p *Processor) ackSources(ctx context.Context, srcs []*source) {
	if len(srcs) == 0 {
		return
	}
	pending := make([]jetstream.Msg, len(srcs))
	for i, s := range srcs {
		s.acked = true
		pending[i] = s.msg
	}
	actx, cancel := p.graceContext(ctx, p.cfg.AckWait/2)
	defer cancel()
	if !p.cfg.ConfirmEveryAck && p.ackBatch(actx, pending) {
		return
	}
	for attempt := 0; ; attempt++ {
		pending = p.confirmAcks(actx, pending)
		if len(pending) == 0 {
			return
		}
		if !sleep(actx, p.backoff(attempt)) {
			break
		}
	}
	p.m.ackFailures.Add(float64(len(pending)))
	p.log.Warn("acks not confirmed; those events will be redelivered and deduplicated by id", "events", len(pending))
}

// giveBack hands the messages of items back for redelivery after delay
// (at once for 0), each once: a batch message goes back whole, and its
// events accepted already are sent again and deduplicated by id.
func (p *Processor) giveBack(items []item, delay time.Duration) {
	var msgs []jetstream.Msg
	for _, it := range items {
		if it.src.released || it.src.acked {
			continue
		}
		it.src.released = true
		msgs = append(msgs, it.src.msg)
	}
	if delay <= 0 {
		release(msgs)
		return
	}
	p.handBack(msgs, delay)
}

// ackBatch publishes the acks of msgs and confirms them with one AckSync on
// the last, reporting whether that worked.
func (p *Processor) ackBatch(ctx context.Context, msgs []jetstream.Msg) bool {
	last := len(msgs) - 1
	for _, m := range msgs[:last] {
		if err := m.Ack(); err != nil {
			return false
		}
	}
	return len(p.confirmAcks(ctx, msgs[last:])) == 0
}

// ackPayload is JetStream's positive acknowledgement.
var ackPayload = []byte("+ACK")

// confirmAcks acks msgs with AckSync, in parallel (one at a time would cap
// the throughput at one round trip per event), and returns those that were
// not confirmed. It sends the request itself rather than calling DoubleAck,
// because the client refuses to ack a message twice and a confirmation may
// follow a plain ack of the same message.
func (p *Processor) confirmAcks(ctx context.Context, msgs []jetstream.Msg) []jetstream.Msg {
	ctx, cancel := context.WithTimeout(ctx, ackTimeout)
	defer cancel()
	nc := p.js.Conn()
	failed := make([]bool, len(msgs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, ackParallelism)
	for i, m := range msgs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			_, err := nc.RequestWithContext(ctx, m.Reply(), ackPayload)
			failed[i] = err != nil
		})
	}
	wg.Wait()
	var out []jetstream.Msg
	for i, m := range msgs {
		if failed[i] {
			out = append(out, m)
		}
	}
	return out
}

// deadLetter moves an event OpenMeter rejected (or a payload that is not a
// valid CloudEvent) to kgent.metering.dead.<type> with the reason in a
// header, then acknowledges it. If the dead letter cannot be stored, the
// event is released for a later attempt instead: never dropped.
func (p *Processor) deadLetter(ctx context.Context, it item, reason string, status int, toAck *[]*source) {
	typ := it.typ
	if !validSubjectToken(typ) {
		typ = "unknown"
	}
	dl := nats.NewMsg(DeadLetterSubject(typ))
	dl.Data = it.data
	dl.Header.Set(jetstream.MsgIDHeader, "dead-"+deadID(it))
	dl.Header.Set(HeaderDeadReason, headerValue(reason))
	dl.Header.Set(HeaderOriginalSubject, it.src.msg.Subject())
	if status != 0 {
		dl.Header.Set(HeaderDeadStatus, strconv.Itoa(status))
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	if _, err := p.js.PublishMsg(pctx, dl); err != nil {
		p.log.Error("cannot store a dead letter; the event will be retried", "event_id", it.id, "error", err)
		if !it.src.released && !it.src.acked {
			it.src.released = true
			_ = it.src.msg.NakWithDelay(p.cfg.BackoffMax)
		}
		return
	}
	if it.src.resolve() {
		// Acknowledged with the rest of the batch's done messages; one
		// redelivered later is dead-lettered again, and the dead letter's
		// Nats-Msg-Id drops the copy within the duplicate window.
		*toAck = append(*toAck, it.src)
	}
	p.m.dead[typeLabel(it.typ)].Inc()
	p.markError(fmt.Errorf("event %s dead-lettered: %s", it.id, reason), false)
	p.log.Warn("usage event dead-lettered", "event_id", it.id, "event_type", typeLabel(it.typ),
		"subject", dl.Subject, "status", status, "reason", reason)
}

// deadID is the dead letter's dedupe id: the event's id when it is usable
// as a header, else a digest of the payload.
func deadID(it item) string {
	if it.id != "" && len(it.id) <= 256 && headerValue(it.id) == it.id {
		return it.id
	}
	sum := sha256.Sum256(it.data)
	return "sha256-" + hex.EncodeToString(sum[:16])
}

// headerValue makes s a single-line header value of bounded length.
func headerValue(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > 1024 {
		s = s[:1024]
	}
	return s
}

// keepAlive marks msgs in progress every AckWait/4 until stop is called, so
// a batch in a slow request, being split or acknowledged is not redelivered
// to another worker meanwhile. Acknowledged (and nak'ed) messages are
// skipped by the client.
func (p *Processor) keepAlive(msgs []jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(p.cfg.AckWait / 4)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// release gives messages back to the consumer unacknowledged, for immediate
// redelivery (to this or another replica).
func release(msgs []jetstream.Msg) {
	for _, m := range msgs {
		_ = m.Nak()
	}
}

// heldBack is a message handed back until due.
type heldBack struct {
	msg jetstream.Msg
	due time.Time
}

// handBack gives messages back for redelivery after delay (a retry's
// backoff), and remembers them until then (see renak). A nak that does not
// reach NATS (disconnected) leaves them to the ack wait.
func (p *Processor) handBack(msgs []jetstream.Msg, delay time.Duration) {
	if delay <= 0 {
		release(msgs)
		return
	}
	now := time.Now()
	for _, m := range msgs {
		_ = m.NakWithDelay(delay)
	}
	p.backMu.Lock()
	defer p.backMu.Unlock()
	// A new slice: renak reads the one it stored after letting go of the lock.
	keep := make([]heldBack, 0, len(p.handedBack)+len(msgs))
	for _, h := range p.handedBack {
		if h.due.Add(p.cfg.AckWait).After(now) {
			keep = append(keep, h)
		}
	}
	for _, m := range msgs {
		keep = append(keep, heldBack{msg: m, due: now.Add(delay)})
	}
	// At most what can be pending at once; the oldest go first.
	if over := len(keep) - p.cfg.MaxAckPending; over > 0 {
		keep = append(keep[:0], keep[over:]...)
	}
	p.handedBack = keep
}

// renak hands back again, after a reconnect, the messages handed back
// within the last ack wait: the server may have restarted, forgetting the
// delays of its naks, and would then redeliver them only one ack wait after
// their last delivery. A message since acknowledged is no longer pending,
// and the server ignores the nak; one redelivered to another worker
// meanwhile may be sent twice (same id, deduplicated). The client refuses
// to nak a message twice, so the nak is published directly.
func (p *Processor) renak(nc *nats.Conn) {
	now := time.Now()
	p.backMu.Lock()
	var due []heldBack
	for _, h := range p.handedBack {
		if h.due.Add(p.cfg.AckWait).After(now) {
			due = append(due, h)
		}
	}
	p.handedBack = due
	p.backMu.Unlock()
	for _, h := range due {
		payload := fmt.Appendf(nil, `-NAK {"delay":%d}`, max(h.due.Sub(now), 0).Nanoseconds())
		_ = nc.Publish(h.msg.Reply(), payload)
	}
	if len(due) > 0 {
		p.log.Info("reconnected to NATS; handed back the events waiting for a retry again", "events", len(due))
	}
}

// sleep waits d or until ctx ends; it reports whether the whole d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
