package server_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/kgents/kgents-go/server/servertest"
)

// TestReplaysPassTheRateLimiterNotTheQuotas: an Idempotency-Key replay is
// still a request — it spends a token of the key's per-minute bucket and is
// refused with 429 when the bucket is empty — but it is not a new run: the
// daily request and monthly token quotas do not refuse it, and it counts in
// neither.
func TestReplaysPassTheRateLimiterNotTheQuotas(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false",
		"KGENTS_TIERS_FILE": tiersFile(t, `{"pro":{"requests_per_minute":5,"requests_per_day":2,"tokens_per_month":1}}`)})
	s := createSession(t, in, bob, `{"title":"replays"}`) // request 1 of the day, token 1 of the minute
	path := "/v1/kgent/sessions/" + s.ID + "/messages"
	turn := `{"message":"What should I focus on?","stream":false}`
	resp, first := in.Do(t, "POST", path, bob, turn, "Idempotency-Key", "turn-1") // request 2: the day is spent, tokens over
	mustStatus(t, resp, first, http.StatusOK)

	// Something new is refused now: the day's requests (and the month's tokens) are spent.
	resp, b := in.Do(t, "POST", path, bob, turn, "Idempotency-Key", "turn-2")
	mustStatus(t, resp, b, http.StatusTooManyRequests)

	// Replays of the turn are answered, each spending a per-minute token:
	// the bucket had 5; create, turn and the refusal took 3 (a refusal by
	// the daily quota gives its token back: 2 spent), so 3 replays pass...
	for i := 1; i <= 3; i++ {
		resp, b := in.Do(t, "POST", path, bob, turn, "Idempotency-Key", "turn-1")
		mustStatus(t, resp, b, http.StatusOK)
		if resp.Header.Get("Idempotent-Replayed") != "true" || string(b) != string(first) {
			t.Fatalf("replay %d: %v %s", i, resp.Header, b)
		}
		if resp.Header.Get("X-RateLimit-Limit") != "5" || resp.Header.Get("X-RateLimit-Remaining") != string(rune('0'+3-i)) {
			t.Errorf("replay %d: rate-limit headers %v", i, resp.Header)
		}
	}
	// ...and the next is refused by the rate limiter.
	resp, b = in.Do(t, "POST", path, bob, turn, "Idempotency-Key", "turn-1")
	mustStatus(t, resp, b, http.StatusTooManyRequests)
	if !strings.Contains(decodeErr(t, b).Detail, "per minute") || resp.Header.Get("Retry-After") == "" {
		t.Errorf("replay over the rate limit: %s %v", b, resp.Header)
	}
	// Replays counted in neither the day's requests nor the tokens.
	resp, b = in.Do(t, "GET", "/v1/usage", bob, "")
	mustStatus(t, resp, b, http.StatusOK)
	u := decode[usage](t, b)
	if u.RequestsToday != 2 {
		t.Errorf("requests_today %d after 2 runs and 3 replays; want 2", u.RequestsToday)
	}
}
