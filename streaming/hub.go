package streaming

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
)

// Hub fans session events out to this process's watchers. It is fed twice:
// directly by this replica's own turns (so same-replica watchers keep
// receiving while NATS is down) and by one core NATS subscription per
// watched session (events of turns on other replicas). An event reaching it
// both ways is delivered once: per session the hub remembers the highest
// event id delivered and drops anything not newer.
//
// One subscription per watched session with in-process fan-out, rather than
// a JetStream consumer per watcher, keeps 1,000 watchers of a session at one
// NATS subscription; JetStream is read only to replay history.
type Hub struct {
	nc     *nats.Conn // nil: NATS disabled
	log    *slog.Logger
	tracer trace.Tracer

	mu     sync.RWMutex
	topics map[string]*topic

	watchers prometheus.Gauge
	dropped  prometheus.Counter
}

type topic struct {
	mu   sync.Mutex
	last uint64
	subs map[*Subscription]struct{}
	nsub *nats.Subscription
}

// Subscription is one watcher's feed of a session's live events.
type Subscription struct {
	// C carries events in order. When the watcher falls too far behind,
	// events are dropped and Lagged reports it: the watcher must catch up
	// from history.
	C       <-chan *sessionsv1.SessionEvent
	c       chan *sessionsv1.SessionEvent
	lagged  atomic.Bool
	session string
	hub     *Hub
	once    sync.Once
}

// subscriptionBuffer is how many events a watcher may fall behind before it
// is told to catch up from history (a long reply is a few hundred chunks).
const subscriptionBuffer = 512

// HubOptions configure NewHub.
type HubOptions struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Tracer     trace.TracerProvider
}

// NewHub returns a hub over conn (which may be disabled).
func NewHub(conn *Conn, o HubOptions) *Hub {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h := &Hub{
		log:    o.Logger.With("component", "hub"),
		topics: map[string]*topic{},
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kgents_watchers",
			Help: "Watch streams open on this replica.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kgents_watch_events_dropped_total",
			Help: "Live events a slow watcher could not take (it catches up from history).",
		}),
	}
	if conn != nil && conn.Enabled() {
		h.nc = conn.NATS()
	}
	if o.Tracer == nil {
		o.Tracer = noop.NewTracerProvider()
	}
	h.tracer = o.Tracer.Tracer("kgents.streaming.hub")
	if o.Registerer != nil {
		o.Registerer.MustRegister(h.watchers, h.dropped)
	}
	return h
}

// Subscribe starts a watcher's feed of a session.
func (h *Hub) Subscribe(sessionID string) *Subscription {
	c := make(chan *sessionsv1.SessionEvent, subscriptionBuffer)
	s := &Subscription{C: c, c: c, session: sessionID, hub: h}
	h.mu.Lock()
	t := h.topics[sessionID]
	subscribed := false
	if t == nil {
		t = &topic{subs: map[*Subscription]struct{}{}}
		h.topics[sessionID] = t
		if h.nc != nil {
			t.nsub = h.subscribeNATS(sessionID)
			subscribed = t.nsub != nil
		}
	}
	t.mu.Lock()
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	h.mu.Unlock()
	h.watchers.Inc()
	if subscribed && h.nc.IsConnected() {
		// The server has the interest once the flush returns, so the
		// history read that follows cannot miss what is published between
		// the two (on a cluster, other nodes learn of it a moment later:
		// the watcher closes that gap itself, see sessionsvc).
		_ = h.nc.FlushTimeout(subscribeFlushTimeout)
	}
	return s
}

// subscribeFlushTimeout bounds waiting for the server to confirm a new
// subscription (outside any lock; NATS away, it just does not confirm).
const subscribeFlushTimeout = 2 * time.Second

// subscribeNATS follows the session's events published by any replica. A
// failure (NATS down) leaves the watcher on local events only; it is not an
// error for the watcher.
func (h *Hub) subscribeNATS(sessionID string) *nats.Subscription {
	sub, err := h.nc.Subscribe(SessionFilter(sessionID), func(m *nats.Msg) {
		// One span per event per replica (not per watcher).
		_, span := h.tracer.Start(context.Background(), "nats.consume", trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(
				attribute.String("messaging.system", "nats"),
				attribute.String("messaging.destination.name", m.Subject),
				attribute.String("kgents.session_id", sessionID),
			))
		defer span.End()
		_, ev, err := DecodeEvent(m.Data)
		if err != nil {
			h.log.Warn("undecodable session event on NATS", "subject", m.Subject, "error", err)
			span.RecordError(err)
			span.SetStatus(codes.Error, "undecodable event")
			return
		}
		h.Deliver(ev)
	})
	if err != nil {
		h.log.Warn("cannot follow a session on NATS; local events only", "session_id", sessionID, "error", err)
		return nil
	}
	// Local events arrive directly; a slow consumer here must not stall the
	// NATS connection's other subscriptions.
	_ = sub.SetPendingLimits(64*1024, 64<<20)
	return sub
}

// Broadcast sends m to the session's watchers on every replica with a
// core NATS publish (no JetStream, no ack), when connected. The fan-out
// uses it while the durable publisher spools (its JetStream breaker open
// during a leader election, say): watchers elsewhere keep following the
// turn live while its durable copy waits in the spool for history. A copy
// that reaches a hub twice is delivered once (by event id).
func (h *Hub) Broadcast(m Message) {
	if h.nc == nil || !h.nc.IsConnected() {
		return
	}
	msg := m.natsMsg()
	if err := h.nc.PublishMsg(msg); err != nil {
		h.log.Debug("live broadcast of a session event failed", "subject", m.Subject, "error", err)
	}
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.once.Do(func() {
		h := s.hub
		h.mu.Lock()
		defer h.mu.Unlock()
		h.watchers.Dec()
		t := h.topics[s.session]
		if t == nil {
			return
		}
		t.mu.Lock()
		delete(t.subs, s)
		empty := len(t.subs) == 0
		t.mu.Unlock()
		if empty {
			if t.nsub != nil {
				_ = t.nsub.Unsubscribe()
			}
			delete(h.topics, s.session)
		}
	})
}

// Events is the subscription's channel.
func (s *Subscription) Events() <-chan *sessionsv1.SessionEvent { return s.C }

// Lagged reports (and clears) whether events were dropped for this watcher.
func (s *Subscription) Lagged() bool { return s.lagged.Swap(false) }

// Deliver hands an event to the session's watchers, unless it was already
// delivered. It never blocks: a watcher whose buffer is full misses the event
// and is marked lagged.
func (h *Hub) Deliver(ev *sessionsv1.SessionEvent) {
	h.mu.RLock()
	t := h.topics[ev.GetSessionId()]
	h.mu.RUnlock()
	if t == nil {
		return
	}
	seq := EventSeq(ev)
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq != 0 && seq <= t.last {
		return
	}
	if seq > t.last {
		t.last = seq
	}
	for s := range t.subs {
		select {
		case s.c <- ev:
		default:
			s.lagged.Store(true)
			h.dropped.Inc()
		}
	}
}

// Watchers is the number of open subscriptions.
func (h *Hub) Watchers() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	n := 0
	for _, t := range h.topics {
		t.mu.Lock()
		n += len(t.subs)
		t.mu.Unlock()
	}
	return n
}
