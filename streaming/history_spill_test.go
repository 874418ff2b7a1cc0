package streaming

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// TestHistoryReplaySpillsPastTheHold: more events stored before a late
// turn than the reorder holds are let go and read again, so the late
// turn's events are still delivered before them, in id order, once each,
// from the start or from a resume point.
func TestHistoryReplaySpillsPastTheHold(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := EnsureEventsStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	store := func(from, to uint64) {
		for id := from; id <= to; id++ {
			ev := &sessionsv1.SessionEvent{Id: strconv.FormatUint(id, 10), SessionId: "spill",
				Payload: &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: "w"}}}
			b, err := EncodeEvent("tenant", ev)
			if err != nil {
				t.Fatal(err)
			}
			m := nats.NewMsg(SessionSubject("spill", "chunk"))
			m.Data = b
			m.Header.Set(HeaderEventID, ev.GetId())
			if _, err := js.PublishMsg(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	// 3..19 stored after 20..60: 41 events wait for them, the hold is 8.
	store(1, 2)
	store(20, 60)
	store(3, 19)
	h := NewHistory(js, HistoryOptions{})
	h.hold = 8
	for _, after := range []uint64{0, 1, 2, 10} {
		t.Run("after "+strconv.FormatUint(after, 10), func(t *testing.T) {
			var got []uint64
			if _, _, err := h.Replay(ctx, "spill", after, 60, nil, func(ev *sessionsv1.SessionEvent) error {
				got = append(got, EventSeq(ev))
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
