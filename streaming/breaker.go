package streaming

import (
	"errors"
	"sync"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
)

// errExcluded marks a publish outcome the breaker must not count: the
// connection was down (SPEC §4.9: a disconnect is not a JetStream failure)
// or the message itself was refused.
var errExcluded = errors.New("not counted by the circuit breaker")

// breakerState is the breaker's state as the publisher sees it (stateOf
// maps failsafe-go's).
type breakerState int

const (
	stateClosed breakerState = iota
	stateHalfOpen
	stateOpen
)

// errProbesOut: half-open, and all its probes are out.
var errProbesOut = errors.New("circuit breaker half-open: probes already out")

// breaker is the publish circuit breaker of SPEC §4.9 on a failsafe-go
// circuit breaker: count based, BreakerFailures consecutive failures open
// it for BreakerOpen, then BreakerHalfOpenSuccesses consecutive successes
// close it and any failure opens it again; a NATS reconnect moves it
// straight to half-open (failsafe-go's HalfOpen). Outcomes are reported
// after the fact (acks arrive asynchronously), with TryAcquirePermit's
// counterpart RecordSuccess/RecordFailure.
//
// What this type adds to failsafe-go, because failsafe-go has no way to say
// it: outcomes that must not count (errExcluded), which in half-open also
// give their probe slot back — failsafe-go only releases a half-open permit
// by recording a result, so the probes are admitted here (at most
// BreakerHalfOpenSuccesses out at once) — and
// generations: an outcome of a publish admitted before the last state
// change is ignored (failsafe-go would count a late
// failure of the old closed state as a failed probe).
//
// Every call into cb happens under b.mu; failsafe-go calls the state
// listener (changed) outside its own lock, inside that call, so with b.mu
// held.
type breaker struct {
	failures uint32
	open     time.Duration
	probes   uint32
	onChange func(from, to breakerState) // called with b.mu held: must not block or call b

	mu          sync.Mutex
	cb          circuitbreaker.CircuitBreaker[any]
	gen         uint64 // bumped by every state change
	probing     uint32 // half-open: probes admitted, less the excluded ones
	consecutive uint32 // failures in a row in the current state
	lastFail    time.Time
	lastErr     string
	total       uint64
}

func newBreaker(failures int, open time.Duration, halfOpenSuccesses int, onChange func(from, to breakerState)) *breaker {
	b := &breaker{failures: uint32(failures), open: open, probes: uint32(halfOpenSuccesses), onChange: onChange}
	b.cb = circuitbreaker.NewBuilder[any]().
		WithFailureThreshold(uint(failures)).
		WithDelay(open).
		WithSuccessThreshold(uint(halfOpenSuccesses)).
		OnStateChanged(b.changed).
		Build()
	return b
}

// changed is failsafe-go's state listener. b.mu held.
func (b *breaker) changed(e circuitbreaker.StateChangedEvent) {
	b.gen++
	b.probing = 0
	b.consecutive = 0
	if b.onChange != nil {
		b.onChange(stateOf(e.OldState), stateOf(e.NewState))
	}
}

// current moves an open breaker whose delay is over to half-open (failsafe-go
// does it only when a permit is asked for) and returns its state. b.mu held.
func (b *breaker) current() circuitbreaker.State {
	st := b.cb.State()
	if st == circuitbreaker.OpenState && b.cb.RemainingDelay() == 0 {
		b.cb.HalfOpen()
		st = b.cb.State()
	}
	return st
}

// allow asks whether a publish may go ahead; done reports its outcome (nil,
// an error, or an error wrapping errExcluded). The error is
// circuitbreaker.ErrOpen when open, errProbesOut when half-open with all
// its probes out.
func (b *breaker) allow() (func(error), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.current() {
	case circuitbreaker.OpenState:
		return nil, circuitbreaker.ErrOpen
	case circuitbreaker.HalfOpenState:
		if b.probing >= b.probes {
			return nil, errProbesOut
		}
		b.probing++
	}
	gen := b.gen
	return func(e error) { b.done(gen, e) }, nil
}

func (b *breaker) done(gen uint64, e error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	excluded := errors.Is(e, errExcluded)
	if e != nil && !excluded {
		b.lastFail = time.Now()
		b.lastErr = e.Error()
		b.total++
	}
	if gen != b.gen {
		return // admitted before the last state change
	}
	switch {
	case excluded:
		if b.cb.State() == circuitbreaker.HalfOpenState {
			b.probing--
		}
	case e == nil:
		b.consecutive = 0
		b.cb.RecordSuccess()
	default:
		b.consecutive++
		b.cb.RecordFailure()
	}
}

// state is the breaker's state (moving open to half-open once the delay
// is over).
func (b *breaker) state() breakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return stateOf(b.current())
}

// reconnect moves the breaker to half-open (unless it is half-open already).
func (b *breaker) reconnect() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.current() != circuitbreaker.HalfOpenState {
		b.cb.HalfOpen()
	}
}

func stateOf(s circuitbreaker.State) breakerState {
	switch s {
	case circuitbreaker.OpenState:
		return stateOpen
	case circuitbreaker.HalfOpenState:
		return stateHalfOpen
	default:
		return stateClosed
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

func stateName(s breakerState) string {
	switch s {
	case stateOpen:
		return "open"
	case stateHalfOpen:
		return "half_open"
	default:
		return "closed"
	}
}

// stateGauge is kgents_nats_circuit_state's value: 0 closed, 1 open, 2 half_open.
func stateGauge(s breakerState) float64 {
	switch s {
	case stateOpen:
		return 1
	case stateHalfOpen:
		return 2
	default:
		return 0
	}
}

func (b *breaker) health() BreakerHealth {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := BreakerHealth{
		State:             stateName(stateOf(b.current())),
		Failures:          b.consecutive,
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
