package streaming

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
)

var errPublish = errors.New("nats: no responders available for request")

// testBreaker is a breaker with SPEC §4.9's thresholds (5 failures, 3
// probes) and the given open period, recording its transitions.
type testBreaker struct {
	*breaker
	mu   sync.Mutex
	seen []string
}

func newTestBreaker(open time.Duration) *testBreaker {
	tb := &testBreaker{}
	tb.breaker = newBreaker(5, open, 3, func(from, to breakerState) {
		tb.mu.Lock()
		tb.seen = append(tb.seen, stateName(from)+">"+stateName(to))
		tb.mu.Unlock()
	})
	return tb
}

func (tb *testBreaker) transitions() []string {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return slices.Clone(tb.seen)
}

// call admits one publish and reports out as its outcome.
func (tb *testBreaker) call(t *testing.T, out error) {
	t.Helper()
	done, err := tb.allow()
	if err != nil {
		t.Fatalf("publish refused in state %s: %v", stateName(tb.state()), err)
	}
	done(out)
}

func (tb *testBreaker) wantState(t *testing.T, want breakerState) {
	t.Helper()
	if got := tb.state(); got != want {
		t.Fatalf("state %s, want %s (transitions %v)", stateName(got), stateName(want), tb.transitions())
	}
}

// openIt opens the breaker with five failures.
func (tb *testBreaker) openIt(t *testing.T) {
	t.Helper()
	for range 5 {
		tb.call(t, errPublish)
	}
	tb.wantState(t, stateOpen)
}

func TestBreakerCountsConsecutiveFailures(t *testing.T) {
	t.Parallel()
	excluded := errors.Join(errExcluded, errPublish)
	for _, tc := range []struct {
		name     string
		outcomes []error
		want     breakerState
		failures uint32 // consecutive failures reported by health
	}{
		{"four failures", []error{errPublish, errPublish, errPublish, errPublish}, stateClosed, 4},
		{"five failures", []error{errPublish, errPublish, errPublish, errPublish, errPublish}, stateOpen, 0},
		{"a success breaks the run", []error{errPublish, errPublish, errPublish, errPublish, nil, errPublish, errPublish, errPublish, errPublish}, stateClosed, 4},
		{"excluded outcomes do not count", []error{excluded, excluded, excluded, excluded, excluded, excluded}, stateClosed, 0},
		{"nor break a run", []error{errPublish, errPublish, excluded, errPublish, errPublish, excluded, errPublish}, stateOpen, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb := newTestBreaker(time.Minute)
			for _, out := range tc.outcomes {
				tb.call(t, out)
			}
			tb.wantState(t, tc.want)
			h := tb.health()
			if h.Failures != tc.failures || h.FailureThreshold != 5 || h.HalfOpenSuccesses != 3 || h.RecoveryTimeout != 60 {
				t.Errorf("health %+v, want %d consecutive failures", h, tc.failures)
			}
			if tc.want == stateOpen {
				if _, err := tb.allow(); !errors.Is(err, circuitbreaker.ErrOpen) {
					t.Errorf("allow while open: %v, want ErrOpen", err)
				}
				if got := tb.transitions(); !slices.Equal(got, []string{"closed>open"}) {
					t.Errorf("transitions %v", got)
				}
			}
		})
	}
}

func TestBreakerHalfOpenProbes(t *testing.T) {
	t.Parallel()
	tb := newTestBreaker(20 * time.Millisecond)
	tb.openIt(t)
	eventually(t, 5*time.Second, "half-open after the open period", func() bool { return tb.state() == stateHalfOpen })

	// Three probes at most are out at once; an excluded outcome gives its
	// slot back, a success does not.
	var probes []func(error)
	for range 3 {
		done, err := tb.allow()
		if err != nil {
			t.Fatal(err)
		}
		probes = append(probes, done)
	}
	if _, err := tb.allow(); !errors.Is(err, errProbesOut) {
		t.Fatalf("a fourth probe: %v, want errProbesOut", err)
	}
	probes[0](errors.Join(errExcluded, errPublish)) // disconnected: not a probe result
	done, err := tb.allow()
	if err != nil {
		t.Fatalf("after an excluded probe: %v", err)
	}
	probes[0] = done
	probes[1](nil)
	if _, err := tb.allow(); !errors.Is(err, errProbesOut) {
		t.Fatalf("a success freed a probe slot: %v", err)
	}
	tb.wantState(t, stateHalfOpen)
	probes[2](nil)
	probes[0](nil)
	tb.wantState(t, stateClosed)
	want := []string{"closed>open", "open>half_open", "half_open>closed"}
	if got := tb.transitions(); !slices.Equal(got, want) {
		t.Fatalf("transitions %v, want %v", got, want)
	}
}

func TestBreakerFailedProbeReopens(t *testing.T) {
	t.Parallel()
	tb := newTestBreaker(20 * time.Millisecond)
	tb.openIt(t)
	eventually(t, 5*time.Second, "half-open", func() bool { return tb.state() == stateHalfOpen })
	tb.call(t, nil)
	tb.call(t, errPublish)
	if st := tb.breaker.cb.State(); st != circuitbreaker.OpenState {
		t.Fatalf("after a failed probe: %s, want open", st)
	}
	if h := tb.health(); h.TotalFailures != 6 || h.LastFailure == nil || h.LastError != errPublish.Error() {
		t.Errorf("health %+v", h)
	}
	eventually(t, 5*time.Second, "half-open again", func() bool { return tb.state() == stateHalfOpen })
	want := []string{"closed>open", "open>half_open", "half_open>open", "open>half_open"}
	if got := tb.transitions(); !slices.Equal(got, want) {
		t.Fatalf("transitions %v, want %v", got, want)
	}
}

// TestBreakerReconnectMovesToHalfOpen: SPEC §4.9, a reconnect moves the
// breaker straight to half-open, from closed or from open however long its
// open period still runs; half-open it stays as it is.
func TestBreakerReconnectMovesToHalfOpen(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, tb *testBreaker)
		// successes to close it after the reconnect
		probes int
		want   []string
	}{
		{"from closed", func(*testing.T, *testBreaker) {}, 3, []string{"closed>half_open", "half_open>closed"}},
		{"from open", func(t *testing.T, tb *testBreaker) { tb.openIt(t) }, 3, []string{"closed>open", "open>half_open", "half_open>closed"}},
		{"half-open stays", func(t *testing.T, tb *testBreaker) {
			tb.openIt(t)
			tb.reconnect()
			tb.call(t, nil) // one probe succeeded: kept across the second reconnect
		}, 2, []string{"closed>open", "open>half_open", "half_open>closed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tb := newTestBreaker(time.Hour)
			tc.setup(t, tb)
			tb.reconnect()
			tb.wantState(t, stateHalfOpen)
			probes := 0
			for tb.state() == stateHalfOpen && probes < 10 {
				tb.call(t, nil)
				probes++
			}
			tb.wantState(t, stateClosed)
			if probes != tc.probes {
				t.Errorf("closed after %d successful probes, want %d", probes, tc.probes)
			}
			if got := tb.transitions(); !slices.Equal(got, tc.want) {
				t.Fatalf("transitions %v, want %v", got, tc.want)
			}
		})
	}
}

// TestBreakerIgnoresOutcomesOfAnEarlierState: acks arrive late; a publish
// admitted before a state change does not count in the new state.
func TestBreakerIgnoresOutcomesOfAnEarlierState(t *testing.T) {
	t.Parallel()
	tb := newTestBreaker(time.Hour)
	late, err := tb.allow() // admitted while closed
	if err != nil {
		t.Fatal(err)
	}
	tb.openIt(t)
	tb.reconnect()
	late(errPublish) // a failure of the closed state is not a failed probe
	tb.wantState(t, stateHalfOpen)
	if h := tb.health(); h.TotalFailures != 6 {
		t.Errorf("total failures %d, want 6 (the late one is still a failure)", h.TotalFailures)
	}
	for range 3 {
		tb.call(t, nil)
	}
	tb.wantState(t, stateClosed)
}
