package lifecycle

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
)

// JetStream names of the webhook queue.
const (
	// EventsStream keeps every verified webhook event.
	EventsStream = "kgent-stripe-events"
	// EventsSubjectPrefix + sanitized type is where an event is stored.
	EventsSubjectPrefix = "kgent.stripe.events."
	// ApplierConsumer is the durable consumer every replica shares; one
	// event is in flight at a time across all of them (MaxAckPending 1),
	// so an event is never applied by two replicas at once and events
	// apply in the order they were received.
	ApplierConsumer = "stripe-applier"
	// EventsMaxAge: events stay for inspection and replay.
	EventsMaxAge = 30 * 24 * time.Hour
	// EventsDuplicates is the Nats-Msg-Id window. The Msg-Id is the event id
	// and the signature timestamp of the delivery, so only a copy of one
	// delivery (a proxy's retry, a replayed request) is dropped here; every
	// delivery Stripe makes — its retries, a resend from the dashboard —
	// is signed anew, stored, and caught by the idempotency store if the
	// event was applied already (so a resend re-drives one that was not).
	EventsDuplicates = 10 * time.Minute
	// ApplyAckWait is how long a replica may hold an event before another gets it.
	ApplyAckWait = 30 * time.Second
	// MaxApplyAttempts bounds the retries of an event that keeps failing;
	// then it is given up (counted failed, kept in the stream to re-drive).
	MaxApplyAttempts = 10
)

// queue stores verified events and hands them to the applier.
type queue interface {
	// Put stores an event durably; dup when the same delivery (event id and
	// delivery, the signature timestamp) was stored recently.
	Put(ctx context.Context, id, delivery, typ string, body []byte) (dup bool, err error)
	// Run delivers stored events one at a time to apply until ctx ends.
	// apply returning an error redelivers the event later (after backoff),
	// up to MaxApplyAttempts deliveries; attempt counts from 1.
	Run(ctx context.Context, apply func(ctx context.Context, body []byte, attempt int) error) error
}

type jsQueue struct {
	js       jetstream.JetStream
	replicas int
	log      *slog.Logger
	mu       sync.Mutex
	ensured  bool
}

func newJSQueue(js jetstream.JetStream, replicas int, log *slog.Logger) *jsQueue {
	return &jsQueue{js: js, replicas: max(1, replicas), log: log}
}

func (q *jsQueue) ensure(ctx context.Context) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ensured {
		return nil
	}
	_, err := q.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: EventsStream, Description: "verified Stripe webhook events, applied by the stripe-applier consumer",
		Subjects: []string{EventsSubjectPrefix + ">"}, Retention: jetstream.LimitsPolicy, Storage: jetstream.FileStorage,
		Replicas: q.replicas, MaxAge: EventsMaxAge, Duplicates: EventsDuplicates, MaxMsgs: -1, MaxBytes: -1,
	})
	if err != nil {
		return fmt.Errorf("stream %s: %w", EventsStream, err)
	}
	q.ensured = true
	return nil
}

func (q *jsQueue) reset() {
	q.mu.Lock()
	q.ensured = false
	q.mu.Unlock()
}

// subjectToken makes a Stripe event type a subject suffix.
func subjectToken(typ string) string {
	typ = strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') || r == '_' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, typ)
	typ = strings.Trim(typ, ".")
	for strings.Contains(typ, "..") {
		typ = strings.ReplaceAll(typ, "..", ".")
	}
	if typ == "" {
		return "unknown"
	}
	return typ
}

// errDisconnected: the webhook is refused at once (503) rather than left in
// nats.go's reconnect buffer, from which it could be stored after Stripe was
// told it was not.
var errDisconnected = errors.New("NATS is not connected")

// DeliveryMsgID is the Nats-Msg-Id of one delivery of an event.
func DeliveryMsgID(eventID, delivery string) string {
	if delivery == "" {
		return eventID
	}
	return eventID + "@" + delivery
}

func (q *jsQueue) Put(ctx context.Context, id, delivery, typ string, body []byte) (bool, error) {
	if nc := q.js.Conn(); nc != nil && !nc.IsConnected() {
		return false, errDisconnected
	}
	if err := q.ensure(ctx); err != nil {
		return false, err
	}
	m := nats.NewMsg(EventsSubjectPrefix + subjectToken(typ))
	m.Data = body
	m.Header.Set(jetstream.MsgIDHeader, DeliveryMsgID(id, delivery))
	ack, err := q.js.PublishMsg(ctx, m)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			q.reset()
		}
		return false, err
	}
	return ack.Duplicate, nil
}

func (q *jsQueue) Run(ctx context.Context, apply func(ctx context.Context, body []byte, attempt int) error) error {
	const minBackoff = 200 * time.Millisecond
	backoff := minBackoff
	for ctx.Err() == nil {
		started := time.Now()
		err := q.consume(ctx, apply)
		if time.Since(started) > time.Minute {
			// It had been running fine: this is a new outage, not the same one.
			backoff = minBackoff
		}
		if err != nil && ctx.Err() == nil {
			if q.log != nil {
				q.log.Warn("Stripe webhook applier: consumer interrupted; resuming", "error", err)
			}
			q.reset()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
}

func (q *jsQueue) consume(ctx context.Context, apply func(ctx context.Context, body []byte, attempt int) error) error {
	if err := q.ensure(ctx); err != nil {
		return err
	}
	c, err := q.js.CreateOrUpdateConsumer(ctx, EventsStream, jetstream.ConsumerConfig{
		Durable: ApplierConsumer, Description: "applies Stripe webhook events to tenants (one at a time, any replica)",
		FilterSubject: EventsSubjectPrefix + ">", DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: ApplyAckWait, MaxAckPending: 1, MaxDeliver: -1,
		Replicas: q.replicas,
	})
	if err != nil {
		return fmt.Errorf("consumer %s: %w", ApplierConsumer, err)
	}
	for ctx.Err() == nil {
		// The wait ends with ctx (a shutdown does not wait out the 2 s; an
		// event the server sends to the abandoned pull is redelivered after
		// ApplyAckWait, to whichever replica fetches then).
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		batch, err := c.Fetch(1, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			return err
		}
		for msg := range batch.Messages() {
			attempt := 1
			if md, err := msg.Metadata(); err == nil {
				attempt = int(md.NumDelivered)
			}
			// Keep the event ours while it applies (a long Stripe or NATS wait).
			stop := keepInProgress(ctx, msg)
			err := apply(ctx, msg.Data(), attempt)
			stop()
			switch {
			case err == nil || attempt >= MaxApplyAttempts:
				_ = msg.DoubleAck(ctx)
			case ctx.Err() != nil:
				_ = msg.Nak() // shutting down: hand it to another replica at once
			default:
				_ = msg.NakWithDelay(min(time.Duration(attempt)*time.Second, 10*time.Second))
			}
		}
		cancel()
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return nil
}

func keepInProgress(ctx context.Context, msg jetstream.Msg) func() {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(ApplyAckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

// memQueue is the queue with NATS disabled: one process, not durable.
type memQueue struct {
	mu  sync.Mutex
	ids map[string]time.Time
	ch  chan []byte
}

func newMemQueue() *memQueue {
	return &memQueue{ids: map[string]time.Time{}, ch: make(chan []byte, 1024)}
}

func (q *memQueue) Put(ctx context.Context, id, delivery, _ string, body []byte) (bool, error) {
	key := DeliveryMsgID(id, delivery)
	q.mu.Lock()
	now := time.Now()
	if t, ok := q.ids[key]; ok && now.Sub(t) < EventsDuplicates {
		q.mu.Unlock()
		return true, nil
	}
	for k, t := range q.ids { // bounded: forget deliveries past the window
		if now.Sub(t) >= EventsDuplicates {
			delete(q.ids, k)
		}
	}
	q.ids[key] = now
	q.mu.Unlock()
	select {
	case q.ch <- append([]byte(nil), body...):
		return false, nil
	case <-ctx.Done():
		q.mu.Lock()
		delete(q.ids, key) // not stored: the same delivery retried is not a duplicate
		q.mu.Unlock()
		return false, ctx.Err()
	}
}

func (q *memQueue) Run(ctx context.Context, apply func(ctx context.Context, body []byte, attempt int) error) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-q.ch:
			for attempt := 1; attempt <= MaxApplyAttempts; attempt++ {
				if apply(ctx, b, attempt) == nil || ctx.Err() != nil {
					break
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(min(time.Duration(attempt)*100*time.Millisecond, time.Second)):
				}
			}
		}
	}
}
