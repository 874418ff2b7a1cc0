package streaming

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// The direct path: while not spooling, dispatch moves messages from the
// in-memory queue to JetStream (asynchronous publishes, at most MaxInFlight
// awaiting their ack, each one admitted by the circuit breaker), and collect
// settles their acks in send order, reporting each outcome to the breaker
// and the metrics. A failure moves the rest of the FIFO to the spool.

// directPath is the direct path's state. Its queue (mem, inflight) is
// guarded by Publisher.mu, not by a lock of its own: moving the queue to the
// spool and setting spooling must be one step (see "Order" at the top of
// publisher.go).
type directPath struct {
	mem      fifo[*rec] // Publisher.mu: accepted, waiting for a publish slot
	inflight fifo[*rec] // Publisher.mu: published, awaiting their ack, in send order

	wake chan struct{} // dispatch: the queue, the connection or the breaker changed
	sent chan *rec     // dispatch → collect, in send order
}

func (p *Publisher) dispatchLoop() {
	for {
		select {
		case <-p.stop:
			return
		case <-p.direct.wake:
		}
		p.dispatch()
	}
}

// dispatch sends queued messages while there is room in flight.
func (p *Publisher) dispatch() {
	d := &p.direct
	for {
		p.mu.Lock()
		idle := p.spooling || d.mem.len() == 0 || d.inflight.len() >= p.o.MaxInFlight
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
		if errors.Is(err, errProbesOut) {
			return // half-open: wait for the probes' acks
		}
		p.mu.Lock()
		if err != nil {
			p.switchToSpoolLocked("circuit breaker open")
			p.mu.Unlock()
			return
		}
		if p.spooling || d.mem.len() == 0 {
			p.mu.Unlock()
			done(errExcluded)
			return
		}
		r := d.mem.pop()
		r.brDone = done
		r.connEpoch = p.link.epoch.Load()
		d.inflight.push(r)
		p.mu.Unlock()

		r.fut, r.sendErr = p.js.PublishMsgAsync(r.m.natsMsg(), noClientRetry)
		select {
		case d.sent <- r:
		case <-p.stop:
			return
		}
	}
}

func (p *Publisher) collectLoop() {
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case r := <-p.direct.sent:
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
// It is used by the direct path and the replay alike.
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

// classify sorts a publish error; connEpoch is the connection epoch the
// publish was sent in.
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
	if p.link.epoch.Load() != connEpoch || !p.connected() {
		return outDisconnected
	}
	return outFailed
}

// report tells the breaker and the metrics how a publish attempt went.
// No publisher lock may be held (it calls into the breaker).
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

// finishDirect settles a direct publish, the oldest in flight.
func (p *Publisher) finishDirect(r *rec, ack *jetstream.PubAck, err error) {
	out := p.classify(err, r.connEpoch)
	p.report(r.brDone, out, ack, r.m.Subject, err)
	r.brDone = nil
	if out == outFailed || out == outRejected {
		p.errorSpan(&r.m, err, out)
	}
	d := &p.direct
	p.mu.Lock()
	switch out {
	case outOK:
		if r.spooled {
			p.sp.markAcked(r.spoolSeq)
		}
		p.flush.settle(r, nil, "acked")
	case outRejected:
		if r.spooled {
			p.sp.markAcked(r.spoolSeq)
		}
		if r.durable == nil || p.flush.settled(r) {
			p.keepRejected(&r.m, err)
		} else {
			// A PublishDurable caller still waiting gets the refusal and
			// owns it (the session store settles it): nothing is lost here.
			p.log.Debug("nats publisher: a durable write was refused; returned to its caller",
				"subject_type", subjectType(r.m.Subject), "msg_id", r.m.MsgID, "error", err)
		}
		p.flush.settle(r, fmt.Errorf("%w: %w", ErrRejected, err), "error")
	default:
		if !r.spooled && !r.spoolFailed {
			// r is still at the head of inflight, so it is spooled first.
			p.switchToSpoolLocked(fmt.Sprintf("publish failed: %v", err))
		}
		if r.spoolFailed {
			p.flush.settle(r, err, "error")
			p.health.dropped.Add(1)
			p.met.dropped.WithLabelValues(dropSpool).Inc()
		}
		// Otherwise r resolves when its spool copy is fsynced.
	}
	if d.inflight.len() > 0 && d.inflight.peek() == r {
		d.inflight.pop()
	}
	empty := d.inflight.len() == 0
	spooling := p.spooling
	p.mu.Unlock()
	if empty && spooling {
		wake(p.replay.wake)
	}
	wake(d.wake)
}

// errorSpan records a failed fire-and-forget publish as a span. Successful
// ones get no span (see docs: a span per message costs more than the
// publish); failures are sampled to one span per second.
func (p *Publisher) errorSpan(m *Message, err error, out outcome) {
	now := time.Now().UnixNano()
	last := p.health.spanLimit.Load()
	if now-last < int64(time.Second) || !p.health.spanLimit.CompareAndSwap(last, now) {
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
