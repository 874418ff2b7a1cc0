package streaming

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
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

// healthState is the health part's own state: the state-change hooks and
// the notify goroutine's wake-up, the dropped count, and the rate limits of
// error logs and spans. mu guards hooks only and is a leaf: hooks are
// copied under it and called without it.
type healthState struct {
	wake chan struct{} // notify: something in the health may have changed

	mu    sync.Mutex
	hooks []func(PublisherHealth)

	dropped   atomic.Uint64 // messages neither stored nor spooled
	logLimit  atomic.Int64  // unix ns of the last rate-limited log line
	spanLimit atomic.Int64  // unix ns of the last error span
}

// Spooling reports whether new messages go to the spool rather than
// straight to JetStream (disconnected, breaker open, or a backlog being
// replayed): they reach JetStream, and its subscribers, only later.
func (p *Publisher) Spooling() bool {
	if p.disabled {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.spooling
}

// Health reports the publisher's state.
func (p *Publisher) Health() PublisherHealth {
	if p.disabled {
		return PublisherHealth{State: PublisherDisabled, Mode: ModeFallback, Breaker: p.br.health()}
	}
	h := PublisherHealth{Breaker: p.br.health()}
	connected := p.connected()
	// One snapshot of the routing and the spool (Publisher.mu, then spoolLog.mu).
	p.mu.Lock()
	spooling := p.spooling
	h.InFlight = p.direct.inflight.len() + int(p.replay.inflight.Load())
	h.Queued = p.direct.mem.len()
	h.SpoolDepth, h.SpoolBytes, h.SpoolError = p.sp.stats()
	p.mu.Unlock()
	h.Replaying = p.replay.active.Load()
	h.Dropped = p.health.dropped.Load()
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
	p.health.mu.Lock()
	p.health.hooks = append(p.health.hooks, fn)
	p.health.mu.Unlock()
}

// notifyLoop is the notify goroutine: it calls the hooks when a wake-up
// finds the health changed.
func (p *Publisher) notifyLoop() {
	last := p.Health()
	for {
		select {
		case <-p.stop:
			return
		case <-p.health.wake:
		}
		h := p.Health()
		if h.State == last.State && h.Mode == last.Mode && h.Breaker.State == last.Breaker.State && h.Replaying == last.Replaying {
			continue
		}
		last = h
		p.health.mu.Lock()
		hooks := slices.Clone(p.health.hooks)
		p.health.mu.Unlock()
		for _, fn := range hooks {
			fn(h)
		}
	}
}

// drop counts and logs a message that was not accepted.
func (p *Publisher) drop(reason string, m *Message, err error) {
	p.met.dropped.WithLabelValues(reason).Inc()
	p.health.dropped.Add(1)
	p.logLimited("nats publisher: message dropped", "reason", reason, "subject_type", subjectType(m.Subject), "msg_id", m.MsgID, "error", err)
}

// logLimited logs at most one line per second (errors during an outage or
// with a full disk would otherwise flood the log).
func (p *Publisher) logLimited(msg string, args ...any) {
	now := time.Now().UnixNano()
	last := p.health.logLimit.Load()
	if now-last < int64(time.Second) || !p.health.logLimit.CompareAndSwap(last, now) {
		return
	}
	p.log.Error(msg, args...)
}
