package cluster

import (
	"strings"
	"testing"
	"time"
)

// A gap's report names the missing ids as ranges and the watcher's
// connections with what each received.
func TestGapReport(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		full []uint64
		seen []uint64
		want string
	}{
		{name: "one range", full: []uint64{1, 2, 3, 4, 5}, seen: []uint64{1, 5}, want: "missing 2–4"},
		{name: "two ranges and a single id", full: []uint64{1, 2, 3, 4, 5, 6, 7}, seen: []uint64{2, 4, 5}, want: "missing 1–1, 3–3, 6–7"},
		{name: "ids not contiguous", full: []uint64{10, 20, 30}, seen: []uint64{10}, want: "missing 20–30"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			seen := map[uint64]bool{}
			for _, n := range tc.seen {
				seen[n] = true
			}
			if got := missingRuns(tc.full, seen); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}

	a := watchAttempt{replica: "k2", at: time.Date(2026, 12, 7, 5, 58, 3, 0, time.UTC), after: 20}
	for _, id := range []uint64{21, 22, 97, 98} {
		a.note(id)
	}
	a.end = "EOF"
	got := attemptsReport([]watchAttempt{{replica: "k1"}, a})
	for _, want := range []string{"[k2 05:58:03.000 after=20 got 21..98 (4) jumps [22→97]", `end "EOF"`, "and 1 that received nothing"} {
		if !strings.Contains(got, want) {
			t.Errorf("report %q lacks %q", got, want)
		}
	}
}
