package streaming

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
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
	o      HistoryOptions
	hold   int // ReorderHold (tests lower it)
	// starts remembers where a resume found its start, per session and
	// resume point, for a minute: a watch's second look 0.5 s after it
	// opened, and a gap's repeated reads, skip the bisection. The place
	// stays right as the stream grows (it only appends); an entry is used
	// only while the session's first stored event is the same one (its
	// sequence and store time), so a stream purged or recreated since
	// forgets it. (A plain LRU with the age checked on use: the
	// expirable one runs a goroutine per cache that never ends.)
	starts *lru.Cache[startKey, rememberedStart]
}

type startKey struct {
	session string
	after   uint64
}

type rememberedStart struct {
	seq, first uint64
	firstTime  time.Time
	at         time.Time // when it was found
}

// rememberStartFor is how long a resume's start is remembered.
const rememberStartFor = time.Minute

// HistoryOptions configure a History.
type HistoryOptions struct {
	// Tracer makes each replay a consumer span (nil: no spans).
	Tracer trace.TracerProvider
	// ClockSkew bounds how far apart the clocks of the replicas and NATS
	// servers are (0: ClockSkew).
	ClockSkew time.Duration
	// TurnTimeout bounds a turn (0: DefaultTurnTimeout). Events stored
	// without HeaderTurnStarted (by a replica older than the header) are
	// read as if their turn began this long before they were made.
	TurnTimeout time.Duration
}

// DefaultTurnTimeout is TURN_TIMEOUT's default (LLM_TIMEOUT's 120 s + 30 s).
const DefaultTurnTimeout = 150 * time.Second

// NewHistory returns a History on js (nil when NATS is disabled: there is
// no history then, only live events).
func NewHistory(js jetstream.JetStream, o HistoryOptions) *History {
	if o.Tracer == nil {
		o.Tracer = noop.NewTracerProvider()
	}
	if o.ClockSkew <= 0 {
		o.ClockSkew = ClockSkew
	}
	if o.TurnTimeout <= 0 {
		o.TurnTimeout = DefaultTurnTimeout
	}
	starts, _ := lru.New[startKey, rememberedStart](4096) // a positive size: no error
	return &History{js: js, tracer: o.Tracer.Tracer("kgents.streaming.history"), o: o, hold: ReorderHold, starts: starts}
}

// ErrNoHistory means history cannot be read right now (NATS away or disabled).
var ErrNoHistory = errors.New("session history is unavailable")

// Replay calls deliver for each retained event of the session newer than
// after, in order, until it has caught up with what the stream holds. A
// reset — onReset runs first, reset is true, last restarts at 0 and every
// retained event is delivered — happens when after is set and either the
// events just after it are no longer retained, or no retained event has
// an id at or beyond after and after is beyond known (the newest id the
// caller knows the session has reached): an id the session never had.
// last is the id of the last event delivered.
//
// Events are delivered in id order even when they were stored out of it:
// a replica whose publishes were spooled through a NATS outage stores them
// after events other replicas made later, so stream order is not id order
// and neither the newest stored event nor a search by id can say where
// the events after `after` begin. The times their turns began can: a
// session's turns take ids in the order they begin, every event is made
// after its turn began, and is stored no earlier than it was made. (An
// event's own making time is not enough: a replica cut off from NATS goes
// on making a turn another replica has closed, after the next turn's
// events, which have higher ids.) So Replay finds a stored event of the
// session with an id at most `after`, whose turn began as late as it can
// find (a bisection over the stream's sequence, O(log n) requests), and
// reads everything the session stored from then, less the clock skew (or
// from when that event was stored, if earlier: a clock running ahead).
// Events read out of order are held back until the ids before them have
// been read (up to ReorderHold; beyond that the highest are read again in
// another pass); what is still missing when the read ends is delivered
// after the gap (the caller decides whether to wait for
// it, see sessionsvc). Reads are direct gets (no consumer), in batches of
// DirectBatch, each bounded by ctx and DirectReadTimeout.
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
	from, err := h.startOf(ctx, sessionID, after)
	if err != nil {
		return false, after, err
	}
	if from.seq == 0 { // nothing retained
		if after > known {
			return true, 0, h.reset(true, onReset)
		}
		return false, after, nil
	}
	if !from.reset {
		last, reached, err := h.read(ctx, sessionID, from.seq, after, deliver)
		if err != nil || reached || after <= known {
			return false, last, err
		}
	}
	// A reset: everything retained, from the first.
	if err := h.reset(true, onReset); err != nil {
		return true, 0, err
	}
	last, _, err = h.read(ctx, sessionID, from.first, 0, deliver)
	return true, last, err
}

func (h *History) reset(reset bool, onReset func() error) error {
	if !reset || onReset == nil {
		return nil
	}
	return onReset()
}

// read delivers the session's events stored from stream sequence seq on
// with ids beyond after, in id order; reached reports whether an event
// with an id at or beyond after was read (after is an id the session had).
// When more events wait for an earlier id than the reorder holds, the
// highest are let go and read again in another pass, from where the
// first of them was stored.
func (h *History) read(ctx context.Context, sessionID string, seq, after uint64, deliver func(*sessionsv1.SessionEvent) error) (last uint64, reached bool, err error) {
	ro := reorder{last: after, hold: h.hold, deliver: deliver}
	for {
		ro.spillFrom = 0
		_, _, err = ReadFrom(ctx, h.js, EventsStream, SessionFilter(sessionID), seq, math.MaxInt, func(m *jetstream.RawStreamMsg) bool {
			_, ev, err := DecodeEvent(m.Data)
			if err != nil {
				return true // not ours to judge: skip what cannot be read
			}
			reached = reached || EventSeq(ev) >= after
			return ro.add(ev, m.Sequence) == nil
		})
		if ro.err != nil {
			return ro.last, reached, ro.err
		}
		if err != nil {
			return ro.last, reached, h.unavailable(ctx, err)
		}
		if err := ro.drain(); err != nil || ro.spillFrom == 0 {
			return ro.last, reached, err
		}
		seq = ro.spillFrom
	}
}

// ClockSkew bounds how far apart the clocks of kgentsd replicas and NATS
// servers may be.
const ClockSkew = 5 * time.Second

// ReorderHold bounds the events a replay holds back waiting for an
// earlier id.
const ReorderHold = 4096

// reorder delivers events in id order, holding back those read before an
// earlier id, and each id once. It holds at most hold events: beyond that
// it keeps the lowest ids and lets the others go (spilled), to be read
// again from spillFrom once what it holds is delivered. Every id it holds
// is then below every id it let go, so a gap among them is a gap in the
// stream, not an event still to come.
type reorder struct {
	last      uint64 // the id last delivered (0: none yet, any id may come first)
	hold      int
	held      heldEvents
	spillFrom uint64 // the lowest stream sequence of an event let go (0: none)
	deliver   func(*sessionsv1.SessionEvent) error
	err       error // deliver's error: the replay stops
}

func (r *reorder) add(ev *sessionsv1.SessionEvent, streamSeq uint64) error {
	id := EventSeq(ev)
	if id <= r.last && r.last != 0 {
		return nil // delivered already (or read twice)
	}
	if r.held.Len() == 0 && r.last != 0 && id == r.last+1 {
		return r.send(ev, id) // the usual case: in order
	}
	if r.held.Len() >= r.hold {
		// Full: keep the lowest ids, let the highest go.
		top := r.held.highest()
		if id >= r.held[top].id {
			r.spill(streamSeq)
			return nil
		}
		r.spill(r.held[top].streamSeq)
		heap.Remove(&r.held, top)
	}
	heap.Push(&r.held, heldEvent{ev: ev, id: id, streamSeq: streamSeq})
	// Deliver what is now in order. With nothing delivered yet the lowest
	// id is unknown until the read ends.
	for r.held.Len() > 0 && r.err == nil {
		next := r.held[0].id
		if next <= r.last && r.last != 0 {
			heap.Pop(&r.held)
			continue
		}
		if r.last == 0 || next != r.last+1 {
			break
		}
		_ = r.send(heap.Pop(&r.held).(heldEvent).ev, next) // its error is r.err
	}
	return r.err
}

func (r *reorder) spill(streamSeq uint64) {
	if r.spillFrom == 0 || streamSeq < r.spillFrom {
		r.spillFrom = streamSeq
	}
}

// drain delivers what is still held, in id order, past any gap.
func (r *reorder) drain() error {
	for r.held.Len() > 0 && r.err == nil {
		e := heap.Pop(&r.held).(heldEvent)
		if e.id > r.last || r.last == 0 {
			_ = r.send(e.ev, e.id) // its error is r.err, ending the loop
		}
	}
	return r.err
}

func (r *reorder) send(ev *sessionsv1.SessionEvent, id uint64) error {
	if r.err = r.deliver(ev); r.err == nil {
		r.last = id
	}
	return r.err
}

// heldEvent is an event held back, with its id and where it was stored.
type heldEvent struct {
	ev        *sessionsv1.SessionEvent
	id        uint64
	streamSeq uint64
}

// heldEvents is a min-heap of events by id.
type heldEvents []heldEvent

func (h heldEvents) Len() int           { return len(h) }
func (h heldEvents) Less(i, j int) bool { return h[i].id < h[j].id }
func (h heldEvents) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *heldEvents) Push(x any)        { *h = append(*h, x.(heldEvent)) }
func (h *heldEvents) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = heldEvent{}
	*h = old[:len(old)-1]
	return e
}

// highest is the index of the highest id held (a leaf of the heap; a
// scan of half of it, done only when the hold is full).
func (h heldEvents) highest() int {
	top := len(h) / 2
	for i := top + 1; i < len(h); i++ {
		if h[i].id > h[top].id {
			top = i
		}
	}
	return top
}

// replayStart is where a replay reads from: seq (0: the session has
// nothing retained), or a reset (the events just after the resume point
// are no longer retained); first is the session's first stored sequence.
type replayStart struct {
	seq, first uint64
	reset      bool
}

// startOf finds the stream sequence to replay the events after `after`
// from (see Replay).
func (h *History) startOf(ctx context.Context, sessionID string, after uint64) (replayStart, error) {
	filter := SessionFilter(sessionID)
	first, err := First(ctx, h.js, EventsStream, filter, 1)
	if errors.Is(err, ErrNotFound) {
		return replayStart{}, nil
	}
	if err != nil {
		return replayStart{}, h.unavailable(ctx, err)
	}
	from := replayStart{seq: first.Sequence, first: first.Sequence}
	firstID := msgEventID(first)
	if after == 0 || firstID == after+1 {
		return from, nil
	}
	if firstID > after+1 {
		// The events just after `after` look gone (aged out), unless the
		// next one was stored late, after the first retained one.
		stored, err := h.holds(ctx, filter, first.Sequence, after+1)
		if err != nil {
			return replayStart{}, err
		}
		from.reset = !stored
		return from, nil
	}
	key := startKey{sessionID, after}
	if r, ok := h.starts.Get(key); ok && time.Since(r.at) < rememberStartFor &&
		r.first == first.Sequence && r.firstTime.Equal(first.Time) {
		from.seq = r.seq
		return from, nil
	}
	from.seq, err = h.search(ctx, filter, first, after)
	if err != nil {
		return replayStart{}, err
	}
	h.starts.Add(key, rememberedStart{seq: from.seq, first: first.Sequence, firstTime: first.Time, at: time.Now()})
	return from, nil
}

// search finds where to read the session's events after `after` from
// (its first stored event, with an id at most after, is first).
func (h *History) search(ctx context.Context, filter string, first *jetstream.RawStreamMsg, after uint64) (uint64, error) {
	lastMsg, err := Last(ctx, h.js, EventsStream, filter)
	if err != nil {
		return 0, h.unavailable(ctx, err)
	}
	// Bisect the session's stored events for one with an id at most
	// after, whose notBefore is as late as possible (reading from lo
	// yields such an event, from hi one beyond after). Out-of-order storage
	// makes the ids rise and fall along the stream, so the bisection may
	// not find the latest one; any it finds is a safe place to read from.
	at := h.notBefore(first)
	lo, hi := first.Sequence, lastMsg.Sequence
	if msgEventID(lastMsg) <= after {
		at, hi = later(at, h.notBefore(lastMsg)), lastMsg.Sequence+1
	}
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		m, err := First(ctx, h.js, EventsStream, filter, mid)
		if err != nil {
			return 0, h.unavailable(ctx, err)
		}
		if msgEventID(m) > after {
			hi = mid
		} else {
			at, lo = later(at, h.notBefore(m)), m.Sequence
		}
	}
	if at.IsZero() {
		return first.Sequence, nil // no time to go by: read everything
	}
	m, err := FirstAt(ctx, h.js, EventsStream, filter, at)
	switch {
	case err == nil:
		return max(m.Sequence, first.Sequence), nil
	case errors.Is(err, ErrNotFound): // stored before then: read everything
		return first.Sequence, nil
	default:
		return 0, h.unavailable(ctx, err)
	}
}

// notBefore is a stream time before which no event with a higher id than
// stored event m's can have been stored (zero: m does not say): when m's
// turn began (HeaderTurnStarted) or, without the header (an event outside
// a turn, or stored by an older replica), when m was made less the turn
// timeout; or when m was stored, if earlier (a clock running ahead); less
// the clock skew.
func (h *History) notBefore(m *jetstream.RawStreamMsg) time.Time {
	var at time.Time
	if v := m.Header.Get(HeaderTurnStarted); v != "" {
		at, _ = time.Parse(time.RFC3339Nano, v)
	}
	if at.IsZero() {
		_, ev, err := DecodeEvent(m.Data)
		if err != nil || ev.GetTime() == nil {
			return time.Time{}
		}
		at = ev.GetTime().AsTime().Add(-h.o.TurnTimeout)
	}
	if !m.Time.IsZero() && m.Time.Before(at) {
		at = m.Time
	}
	return at.Add(-h.o.ClockSkew)
}

// later returns the later of two times (zero is unknown, not early).
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// holds reports whether the session stores the event with id from
// stream sequence seq on (a read of all of it, at worst).
func (h *History) holds(ctx context.Context, filter string, seq, id uint64) (bool, error) {
	found := false
	_, _, err := ReadFrom(ctx, h.js, EventsStream, filter, seq, math.MaxInt, func(m *jetstream.RawStreamMsg) bool {
		found = msgEventID(m) == id
		return !found
	})
	if err != nil {
		return false, h.unavailable(ctx, err)
	}
	return found, nil
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
