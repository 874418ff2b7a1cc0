package streaming_test

import (
	"slices"
	"strconv"
	"testing"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/streaming"
)

// TestHistoryReplaySpillsPastTheHold: more events stored before a late
// turn than the reorder holds are let go and read again, so the late
// turn's events are still delivered before them, in id order, once each,
// from the start or from a resume point.
func TestHistoryReplaySpillsPastTheHold(t *testing.T) {
	t.Parallel()
	ctx, _, js := eventsStream(t)
	store := func(from, to uint64) { publishEvents(t, js, "spill", from, to) }
	// 3..19 stored after 20..60: 41 events wait for them, the hold is 8.
	store(1, 2)
	store(20, 60)
	store(3, 19)
	h := streaming.NewHistory(js, streaming.HistoryOptions{})
	streaming.SetReorderHold(h, 8)
	for _, after := range []uint64{0, 1, 2, 10} {
		t.Run("after "+strconv.FormatUint(after, 10), func(t *testing.T) {
			var got []uint64
			if _, _, err := h.Replay(ctx, "spill", after, 60, nil, func(ev *sessionsv1.SessionEvent) error {
				got = append(got, streaming.EventSeq(ev))
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			var want []uint64
			for id := after + 1; id <= 60; id++ {
				want = append(want, id)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("delivered %v, want %d..60", got, after+1)
			}
		})
	}
}
