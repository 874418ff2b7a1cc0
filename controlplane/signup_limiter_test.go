package controlplane

import (
	"testing"
	"time"
)

// TestSignupLimiter: SIGNUP_RATE per hour per address, a refused sign-up
// spends nothing, addresses are independent.
func TestSignupLimiter(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	type step struct {
		at   time.Duration // since t0
		addr string
		wait time.Duration // 0: admitted
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"burst then wait", []step{
			{0, "a", 0}, {0, "a", 0}, {0, "a", 0},
			{0, "a", 20 * time.Minute}, // 3 per hour: one every 20 min
			{5 * time.Minute, "a", 15 * time.Minute},
			{20 * time.Minute, "a", 0},
			{20 * time.Minute, "a", 20 * time.Minute},
		}},
		{"refusals spend nothing", []step{
			{0, "a", 0}, {0, "a", 0}, {0, "a", 0},
			{time.Minute, "a", 19 * time.Minute}, {time.Minute, "a", 19 * time.Minute}, {time.Minute, "a", 19 * time.Minute},
			{20 * time.Minute, "a", 0},
		}},
		{"addresses are independent", []step{
			{0, "a", 0}, {0, "a", 0}, {0, "a", 0}, {0, "a", 20 * time.Minute},
			{0, "b", 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newSignupLimiter(3, time.Hour)
			for i, s := range tc.steps {
				got := l.take(s.addr, t0.Add(s.at))
				if d := got - s.wait; d < -time.Millisecond || d > time.Millisecond {
					t.Errorf("step %d (%s at +%s): wait %s, want %s", i, s.addr, s.at, got, s.wait)
				}
			}
		})
	}
}
