package streaming

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"

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
// after, in order, until it has caught up with what the stream holds. A
// reset — onReset runs first, reset is true, last restarts at 0 and every
// retained event is delivered — happens when after is set and either the
// events just after it are no longer retained, or after is beyond both the
// newest retained event and known (the newest id the caller knows the
// session has reached: an id the session never had). last is the id of the
// last event delivered.
//
// Events are delivered in id order even when they were stored out of it:
// a replica whose publishes were spooled through a NATS outage stores them
// after events other replicas published meanwhile. Replay reads from
// ReorderWindow ids before `after` and holds back up to ReorderHold events
// until the ids before them have been read; what is still missing when the
// read ends is delivered after the gap (the caller decides whether to wait
// for it, see sessionsvc).
//
// It reads with direct gets (no consumer): a bisection over the stream's
// sequence finds where to start in O(log n) requests, then batches of
// DirectBatch events follow, each bounded by ctx and DirectReadTimeout.
func (h *History) Replay(ctx context.Context, sessionID string, after, known uint64, onReset func() error, deliver func(*sessionsv1.SessionEvent) error) (reset bool, last uint64, err error) {
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
	start, reset, err := h.startOf(ctx, sessionID, after, known)
	if err != nil {
		return false, after, err
	}
	last = after
	if reset {
		last = 0
		if onReset != nil {
			if err := onReset(); err != nil {
				return reset, last, err
			}
		}
	}
	if start == 0 {
		return reset, last, nil // nothing to replay
	}
	ro := reorder{last: last, deliver: deliver}
	_, _, err = ReadFrom(ctx, h.js, EventsStream, SessionFilter(sessionID), start, math.MaxInt, func(m *jetstream.RawStreamMsg) bool {
		_, ev, err := DecodeEvent(m.Data)
		if err != nil {
			return true // not ours to judge: skip what cannot be read
		}
		return ro.add(ev) == nil
	})
	if ro.err != nil {
		return reset, ro.last, ro.err
	}
	if err != nil {
		return reset, ro.last, h.unavailable(ctx, err)
	}
	return reset, ro.last, ro.drain()
}

// ReorderWindow is how far (in event ids) a session's events may be stored
// out of order and still replay in order: Replay starts reading this many
// ids before its resume point. ReorderHold bounds the events held back
// waiting for an earlier id.
const (
	ReorderWindow = DirectBatch
	ReorderHold   = 4096
)

// reorder delivers events in id order, holding back those read before an
// earlier id (at most ReorderHold), and each id once.
type reorder struct {
	last    uint64 // the id last delivered (0: none yet, any id may come first)
	held    heldEvents
	deliver func(*sessionsv1.SessionEvent) error
	err     error // deliver's error: the replay stops
}

func (r *reorder) add(ev *sessionsv1.SessionEvent) error {
	seq := EventSeq(ev)
	if seq <= r.last && r.last != 0 {
		return nil // delivered already (or read twice)
	}
	if r.held.Len() == 0 && r.last != 0 && seq == r.last+1 {
		return r.send(ev, seq) // the usual case: in order
	}
	heap.Push(&r.held, ev)
	// Deliver what is now in order. With nothing delivered yet the lowest
	// id is unknown until the read ends (or too much is held).
	for r.held.Len() > 0 && r.err == nil {
		next := EventSeq(r.held[0])
		if next <= r.last && r.last != 0 {
			heap.Pop(&r.held)
			continue
		}
		if (r.last == 0 || next != r.last+1) && r.held.Len() <= ReorderHold {
			break
		}
		_ = r.send(heap.Pop(&r.held).(*sessionsv1.SessionEvent), next) // its error is r.err
	}
	return r.err
}

// drain delivers what is still held, in id order, past any gap.
func (r *reorder) drain() error {
	for r.held.Len() > 0 && r.err == nil {
		ev := heap.Pop(&r.held).(*sessionsv1.SessionEvent)
		if seq := EventSeq(ev); seq > r.last || r.last == 0 {
			_ = r.send(ev, seq) // its error is r.err, ending the loop
		}
	}
	return r.err
}

func (r *reorder) send(ev *sessionsv1.SessionEvent, seq uint64) error {
	if r.err = r.deliver(ev); r.err == nil {
		r.last = seq
	}
	return r.err
}

// heldEvents is a min-heap of events by id.
type heldEvents []*sessionsv1.SessionEvent

func (h heldEvents) Len() int           { return len(h) }
func (h heldEvents) Less(i, j int) bool { return EventSeq(h[i]) < EventSeq(h[j]) }
func (h heldEvents) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *heldEvents) Push(x any)        { *h = append(*h, x.(*sessionsv1.SessionEvent)) }
func (h *heldEvents) Pop() any {
	old := *h
	ev := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return ev
}

// startOf finds the stream sequence to replay from (0: nothing to replay)
// and whether the watcher must reset.
func (h *History) startOf(ctx context.Context, sessionID string, after, known uint64) (start uint64, reset bool, err error) {
	filter := SessionFilter(sessionID)
	first, err := First(ctx, h.js, EventsStream, filter, 1)
	if errors.Is(err, ErrNotFound) {
		// Nothing retained: an id the session never reached is a reset.
		return 0, after > known, nil
	}
	if err != nil {
		return 0, false, h.unavailable(ctx, err)
	}
	firstID := msgEventID(first)
	if after == 0 || firstID > after {
		return first.Sequence, after > 0 && firstID > after+1, nil
	}
	lastMsg, err := Last(ctx, h.js, EventsStream, filter)
	if err != nil {
		return 0, false, h.unavailable(ctx, err)
	}
	lastID := msgEventID(lastMsg)
	if lastID <= after && after > max(lastID, known) {
		return first.Sequence, true, nil
	}
	// Read from ReorderWindow ids early: an event after `after` may have
	// been stored before one at or before it (see Replay).
	target := after - min(after, ReorderWindow)
	if firstID > target {
		return first.Sequence, false, nil
	}
	if lastID <= target {
		return 0, false, nil // caught up
	}
	// Bisect: reading from lo yields an event ≤ target, from hi one > target.
	lo, hi := first.Sequence, lastMsg.Sequence
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		m, err := First(ctx, h.js, EventsStream, filter, mid)
		if err != nil {
			return 0, false, h.unavailable(ctx, err)
		}
		if msgEventID(m) > target {
			hi = mid
		} else {
			lo = m.Sequence
		}
	}
	return hi, false, nil
}

// msgEventID reads a stored event's id from its header (or its body, for
// events stored without the header).
func msgEventID(m *jetstream.RawStreamMsg) uint64 {
	if v := m.Header.Get(HeaderEventID); v != "" {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			return n
		}
	}
	if _, ev, err := DecodeEvent(m.Data); err == nil {
		return EventSeq(ev)
	}
	return 0
}

func (h *History) unavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w: %w", ErrNoHistory, err)
}

// EnsureEventsStream creates or updates kgent-events.
func EnsureEventsStream(ctx context.Context, js jetstream.JetStream, replicas int) error {
	_, err := js.CreateOrUpdateStream(ctx, EventsStreamConfig(replicas))
	return err
}
