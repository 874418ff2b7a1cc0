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

// item is one decoded message.
type item struct {
	msg jetstream.Msg
	id  string // CloudEvent id ("" if the payload has none)
	typ string // CloudEvent type, or the subject's suffix
}

// deliver sends one fetched batch. Its messages are marked in progress
// until each is acknowledged or released, however long that takes.
func (p *Processor) deliver(ctx context.Context, msgs []jetstream.Msg) {
	stop := p.keepAlive(msgs)
	defer stop()
	items := make([]item, 0, len(msgs))
	for _, m := range msgs {
		it, err := decode(m)
		if err != nil {
			p.deadLetter(ctx, it, err.Error(), 0)
			continue
		}
		items = append(items, it)
	}
	if len(items) > 0 {
		p.send(ctx, items, 0)
	}
}

// decode checks that a payload is a structured JSON CloudEvent 1.0 that
// OpenMeter can take, since its bytes are copied into the batch as they are.
func decode(m jetstream.Msg) (item, error) {
	it := item{msg: m, typ: strings.TrimPrefix(m.Subject(), EventSubjectPrefix)}
	data := m.Data()
	if !json.Valid(data) {
		return it, errors.New("payload is not JSON")
	}
	var ev event.Event
	if err := ev.UnmarshalJSON(data); err != nil {
		return it, fmt.Errorf("payload is not a CloudEvent: %w", err)
	}
	it.id = ev.ID()
	if ev.Type() != "" {
		it.typ = ev.Type()
	}
	if err := validate(&ev); err != nil {
		return it, err
	}
	return it, nil
}

// send posts items until OpenMeter accepts them, acknowledging them then.
// A rejected batch is split in halves until the rejected events are alone;
// those are dead-lettered. It gives up only when ctx ends, releasing the
// items without acknowledging them.
func (p *Processor) send(ctx context.Context, items []item, depth int) {
	for attempt := 0; ; attempt++ {
		if !sleep(ctx, time.Until(time.Unix(0, p.pauseUntil.Load()))) {
			release(msgsOf(items))
			return
		}
		err := p.post(ctx, items, attempt, depth)
		if err == nil {
			p.markSuccess()
			p.ack(ctx, items)
			return
		}
		if ctx.Err() != nil {
			// Shutting down: the request was cut short, or its answer
			// does not matter any more.
			release(msgsOf(items))
			return
		}
		var ie *IngestError
		if !errors.As(err, &ie) {
			ie = &IngestError{Kind: KindNetwork, Detail: err.Error()}
		}
		p.m.flushErrors[ie.Kind].Inc()
		if ie.Kind == KindBadBatch {
			p.rejected(ctx, items, ie, depth)
			return
		}
		p.markError(err, true)
		wait := p.retryWait(ie, attempt)
		if ie.Kind == KindRateLimited {
			p.pause(wait)
		}
		p.log.Warn("openmeter ingestion failed; retrying the same batch", "reason", ie.Kind, "status", ie.Status,
			"error", err, "events", len(items), "attempt", attempt+1, "retry_in", wait)
		if !sleep(ctx, wait) {
			release(msgsOf(items))
			return
		}
	}
}

// rejected handles a 400/413/422: OpenMeter is working, but some event (or
// the batch's size) is not acceptable. OpenMeter's batches are not atomic,
// so the halves may repeat events it already took; it dedupes them by id.
func (p *Processor) rejected(ctx context.Context, items []item, ie *IngestError, depth int) {
	p.markReachable()
	if len(items) == 1 {
		p.deadLetter(ctx, items[0], ie.Error(), ie.Status)
		return
	}
	p.log.Info("openmeter rejected a batch; splitting it to isolate the bad events", "events", len(items),
		"status", ie.Status, "error", ie.Error())
	half := len(items) / 2
	p.send(ctx, items[:half], depth+1)
	p.send(ctx, items[half:], depth+1)
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
		events[i] = it.msg.Data()
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
	for _, it := range items {
		p.m.sent[typeLabel(it.typ)].Inc()
	}
	actx, cancel := p.graceContext(ctx, p.cfg.AckWait/2)
	defer cancel()
	pending := msgsOf(items)
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
func (p *Processor) deadLetter(ctx context.Context, it item, reason string, status int) {
	typ := it.typ
	if !validSubjectToken(typ) {
		typ = "unknown"
	}
	dl := nats.NewMsg(DeadLetterSubject(typ))
	dl.Data = it.msg.Data()
	dl.Header.Set(jetstream.MsgIDHeader, "dead-"+deadID(it))
	dl.Header.Set(HeaderDeadReason, headerValue(reason))
	dl.Header.Set(HeaderOriginalSubject, it.msg.Subject())
	if status != 0 {
		dl.Header.Set(HeaderDeadStatus, strconv.Itoa(status))
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	if _, err := p.js.PublishMsg(pctx, dl); err != nil {
		p.log.Error("cannot store a dead letter; the event will be retried", "event_id", it.id, "error", err)
		_ = it.msg.NakWithDelay(p.cfg.BackoffMax)
		return
	}
	if failed := p.confirmAcks(pctx, []jetstream.Msg{it.msg}); len(failed) > 0 {
		// Redelivered later, dead-lettered again: the dead letter's
		// Nats-Msg-Id drops the copy within the duplicate window.
		p.m.ackFailures.Inc()
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
	sum := sha256.Sum256(it.msg.Data())
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
// a batch in backoff, in a slow request or being split is not redelivered to
// another worker meanwhile. Acknowledged messages are skipped by the client.
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

func msgsOf(items []item) []jetstream.Msg {
	msgs := make([]jetstream.Msg, len(items))
	for i, it := range items {
		msgs[i] = it.msg
	}
	return msgs
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
