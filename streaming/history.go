package streaming

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
)

// History replays a session's retained events from the kgent-events stream.
type History struct {
	js     jetstream.JetStream
	tracer trace.Tracer
}

// NewHistory returns a History on js (nil when NATS is disabled: there is
// no history then, only live events). Each replay is a consumer span on tp
// (nil: no spans).
func NewHistory(js jetstream.JetStream, tp trace.TracerProvider) *History {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	return &History{js: js, tracer: tp.Tracer("kgents.streaming.history")}
}

// ErrNoHistory means history cannot be read right now (NATS away or disabled).
var ErrNoHistory = errors.New("session history is unavailable")

// Replay calls deliver for each retained event of the session newer than
// after, in order, until it has caught up with what the stream holds. If
// after is set but the events just after it are no longer retained, onReset
// runs first, reset is true and every retained event is delivered. last is
// the id of the last event delivered.
func (h *History) Replay(ctx context.Context, sessionID string, after uint64, onReset func() error, deliver func(*sessionsv1.SessionEvent) error) (reset bool, last uint64, err error) {
	if h == nil || h.js == nil {
		return false, after, ErrNoHistory
	}
	ctx, span := h.tracer.Start(ctx, "nats.history.replay", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", EventsStream),
			attribute.String("kgents.session_id", sessionID),
			attribute.Int64("kgents.after", int64(min(after, math.MaxInt64))),
		))
	defer func() {
		span.SetAttributes(attribute.Bool("kgents.reset", reset), attribute.Int64("kgents.last", int64(min(last, math.MaxInt64))))
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	stream, err := h.js.Stream(ctx, EventsStream)
	if err != nil {
		return false, after, fmt.Errorf("%w: %w", ErrNoHistory, err)
	}
	filter := SessionFilter(sessionID)
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return false, after, fmt.Errorf("%w: %w", ErrNoHistory, err)
	}
	var total uint64
	for _, n := range info.State.Subjects {
		total += n
	}
	if total == 0 {
		return false, after, nil
	}
	cons, err := h.js.OrderedConsumer(ctx, EventsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{filter},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return false, after, fmt.Errorf("%w: %w", ErrNoHistory, err)
	}
	last = after
	first := true
	for {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return reset, last, fmt.Errorf("%w: %w", ErrNoHistory, err)
		}
		n := 0
		caughtUp := false
		for msg := range batch.Messages() {
			n++
			meta, merr := msg.Metadata()
			_, ev, derr := DecodeEvent(msg.Data())
			if derr != nil {
				continue // not ours to judge: skip what cannot be read
			}
			seq := EventSeq(ev)
			if first {
				first = false
				reset = after > 0 && seq > after+1
				if reset {
					last = 0
					if onReset != nil {
						if err := onReset(); err != nil {
							return reset, last, err
						}
					}
				}
			}
			if seq > last {
				if err := deliver(ev); err != nil {
					return reset, last, err
				}
				last = seq
			}
			if merr == nil && meta.NumPending == 0 {
				caughtUp = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return reset, last, fmt.Errorf("%w: %w", ErrNoHistory, err)
		}
		if caughtUp || n == 0 {
			return reset, last, nil
		}
	}
}

// EnsureEventsStream creates or updates kgent-events.
func EnsureEventsStream(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := js.CreateOrUpdateStream(ctx, EventsStreamConfig(replicas))
	return err
}
