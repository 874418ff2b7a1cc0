package streaming

import (
	"errors"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// errExcluded marks a publish outcome the breaker must not count: the
// connection was down (SPEC §4.9: a disconnect is not a JetStream failure)
// or the message itself was refused.
var errExcluded = errors.New("not counted by the circuit breaker")

// errForcedTrip is the synthetic failure used to open a fresh breaker.
var errForcedTrip = errors.New("forced open")

// breaker wraps a gobreaker.TwoStepCircuitBreaker (two-step because acks
// arrive asynchronously) with the one transition gobreaker has no API for:
// a NATS reconnect moves the breaker straight to half-open.
//
// gobreaker's state is private and has no setter, so reconnect replaces the
// instance with a "probe" instance built to start probing: it is opened by
// one forced failure (ReadyToTrip returns true while b.forcing is set) and
// has an open Timeout of 1ns, so its very next State/Allow call moves it to
// gobreaker's own half-open state. From there gobreaker's logic applies
// unchanged (MaxRequests probes, HalfOpenSuccesses consecutive successes
// close it). The probe instance's 1ns timeout must not be used for a real
// open period, so the moment the probe instance opens again (a failed probe,
// or later 5 failures once closed) it is replaced by a regular instance,
// force-opened the same way, which stays open for the configured period.
// Requests admitted by a replaced instance report to that old instance,
// which ignores them as far as we are concerned (its callbacks are dropped),
// exactly like gobreaker's own generations.
//
// Every call into the current instance happens under b.mu, so the swap is
// atomic with respect to Allow and done; OnStateChange runs inside those
// calls, with b.mu held.
type breaker struct {
	failures uint32
	open     time.Duration
	probes   uint32
	onChange func(from, to gobreaker.State) // called with b.mu held: must not block or call b

	mu       sync.Mutex
	cb       *gobreaker.TwoStepCircuitBreaker[struct{}]
	probe    bool
	forcing  bool
	quiet    bool
	eff      gobreaker.State
	lastFail time.Time
	lastErr  string
	total    uint64
}

func newBreaker(failures int, open time.Duration, halfOpenSuccesses int, onChange func(from, to gobreaker.State)) *breaker {
	b := &breaker{failures: uint32(failures), open: open, probes: uint32(halfOpenSuccesses), onChange: onChange}
	b.cb = b.newInstance(false)
	b.eff = gobreaker.StateClosed
	return b
}

func (b *breaker) newInstance(probe bool) *gobreaker.TwoStepCircuitBreaker[struct{}] {
	timeout := b.open
	if probe {
		timeout = time.Nanosecond
	}
	var self *gobreaker.TwoStepCircuitBreaker[struct{}]
	self = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "nats-publish",
		MaxRequests: b.probes,
		Timeout:     timeout,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return b.forcing || c.ConsecutiveFailures >= b.failures
		},
		IsExcluded:    func(err error) bool { return errors.Is(err, errExcluded) },
		OnStateChange: func(_ string, from, to gobreaker.State) { b.changed(self, from, to) },
	})
	return self
}

// changed runs with b.mu held, inside inst's own lock.
func (b *breaker) changed(inst *gobreaker.TwoStepCircuitBreaker[struct{}], _, to gobreaker.State) {
	if inst != b.cb {
		return // a replaced instance
	}
	if b.probe && to == gobreaker.StateOpen && !b.forcing {
		b.probe = false
		b.cb = b.newInstance(false)
		b.trip()
		return
	}
	b.setEff(to)
}

func (b *breaker) setEff(s gobreaker.State) {
	if s == b.eff {
		return
	}
	from := b.eff
	b.eff = s
	if !b.quiet && b.onChange != nil {
		b.onChange(from, s)
	}
}

// trip opens the current (fresh, closed) instance. b.mu held.
func (b *breaker) trip() {
	b.forcing = true
	if done, err := b.cb.Allow(); err == nil {
		done(errForcedTrip)
	}
	b.forcing = false
}

// allow asks whether a publish may go ahead; done reports its outcome (nil,
// an error, or an error wrapping errExcluded).
func (b *breaker) allow() (func(error), error) {
	b.mu.Lock()
	done, err := b.cb.Allow()
	b.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return func(e error) {
		b.mu.Lock()
		if e != nil && !errors.Is(e, errExcluded) {
			b.lastFail = time.Now()
			b.lastErr = e.Error()
			b.total++
		}
		done(e)
		b.mu.Unlock()
	}, nil
}

// state is gobreaker's state (moving open to half-open once the timeout passed).
func (b *breaker) state() gobreaker.State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cb.State()
}

// reconnect moves the breaker to half-open (unless it is half-open already).
func (b *breaker) reconnect() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cb.State() == gobreaker.StateHalfOpen {
		return
	}
	prev := b.eff
	b.quiet = true
	b.probe = true
	b.cb = b.newInstance(true)
	b.trip()
	_ = b.cb.State() // the 1ns open period is over: half-open
	b.quiet = false
	if b.eff != prev && b.onChange != nil {
		b.onChange(prev, b.eff)
	}
}

// BreakerHealth is the circuit breaker part of PublisherHealth.
type BreakerHealth struct {
	// State is closed, open or half_open.
	State string `json:"state"`
	// Failures counts consecutive failures in the current state.
	Failures uint32 `json:"failures"`
	// TotalFailures counts every failure since the publisher started.
	TotalFailures uint64     `json:"total_failures"`
	LastFailure   *time.Time `json:"last_failure"`
	LastError     string     `json:"last_error,omitempty"`
	// FailureThreshold consecutive failures open the breaker.
	FailureThreshold int `json:"failure_threshold"`
	// RecoveryTimeout is how long it stays open, in seconds.
	RecoveryTimeout float64 `json:"recovery_timeout"`
	// HalfOpenSuccesses consecutive successes close it again.
	HalfOpenSuccesses int `json:"half_open_successes"`
}

func stateName(s gobreaker.State) string {
	switch s {
	case gobreaker.StateOpen:
		return "open"
	case gobreaker.StateHalfOpen:
		return "half_open"
	default:
		return "closed"
	}
}

// stateGauge is kgents_nats_circuit_state's value: 0 closed, 1 open, 2 half_open.
func stateGauge(s gobreaker.State) float64 {
	switch s {
	case gobreaker.StateOpen:
		return 1
	case gobreaker.StateHalfOpen:
		return 2
	default:
		return 0
	}
}

func (b *breaker) health() BreakerHealth {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.cb.State()
	h := BreakerHealth{
		State:             stateName(st),
		Failures:          b.cb.Counts().ConsecutiveFailures,
		TotalFailures:     b.total,
		LastError:         b.lastErr,
		FailureThreshold:  int(b.failures),
		RecoveryTimeout:   b.open.Seconds(),
		HalfOpenSuccesses: int(b.probes),
	}
	if !b.lastFail.IsZero() {
		t := b.lastFail.UTC()
		h.LastFailure = &t
	}
	return h
}
