package server_test

import (
	"net/http"
	"testing"

	"github.com/kgents/kgents-go/server/servertest"
)

// TestQuotaCountersSurviveARestart: a tenant spends its monthly tokens, the
// process restarts on the same data (same NATS store). From its very first
// call the new process reports the real usage and refuses the tenant —
// before, it counted from zero until its first sync and admitted calls
// meanwhile (the monthly quota overshot up to 4×).
func TestQuotaCountersSurviveARestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	env := map[string]string{"KGENTS_DATA_DIR": dir,
		"KGENTS_TIERS_FILE": tiersFile(t, `{"pro":{"requests_per_minute":0,"requests_per_day":0,"tokens_per_month":10}}`)}
	first := servertest.Start(t, env)
	resp, b := first.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"I keep rewriting my plans instead of doing the work"}`)
	mustStatus(t, resp, b, http.StatusOK)
	spent := decode[dialogue](t, b).TokensUsed
	if spent < 10 {
		t.Fatalf("the reply cost %d tokens; the test needs it over the quota of 10", spent)
	}
	if err := first.Stop(); err != nil { // folds the counters into the bucket
		t.Fatal(err)
	}

	second := servertest.Start(t, env)
	resp, b = second.Do(t, "GET", "/v1/usage", bob, "")
	mustStatus(t, resp, b, http.StatusOK)
	if u := decode[usage](t, b); u.TokensMonth != spent || u.TokensToday != spent {
		t.Errorf("first usage read after a restart: %+v; want the %d tokens spent before it", u, spent)
	}
	resp, b = second.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"one more"}`)
	mustStatus(t, resp, b, http.StatusTooManyRequests)
}
