package streaming_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/streaming"
)

// BenchmarkHistoryResume: a watcher resuming 10 events before the end of
// a session of n events (turns of 200, each stamped with its start),
// among as many events of other sessions. What a resume costs should grow
// with log n (the bisection), not n. The events are stored within seconds,
// so the clock skew is 1 ms here; with the real 5 s a resume also reads
// what the session stored in the 5 s before its turn began.
func BenchmarkHistoryResume(b *testing.B) {
	for _, n := range []int{2_000, 20_000, 100_000} {
		b.Run("events="+strconv.Itoa(n), func(b *testing.B) {
			ctx, _, js := eventsStream(b)
			storeTurns(b, js, "resume", "other", n)
			h := streaming.NewHistory(js, streaming.HistoryOptions{ClockSkew: time.Millisecond})
			after := uint64(n - 10)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				got := 0
				if _, _, err := h.Replay(ctx, "resume", after, uint64(n), nil, func(*sessionsv1.SessionEvent) error { got++; return nil }); err != nil {
					b.Fatal(err)
				}
				if got != 10 {
					b.Fatalf("delivered %d events, want 10", got)
				}
			}
		})
	}
}

// storeTurns stores n events of session, and n of other interleaved turn
// by turn, 200 events a turn, asynchronously.
func storeTurns(b *testing.B, js jetstream.JetStream, session, other string, n int) {
	b.Helper()
	const turn = 200
	for start := 1; start <= n; start += turn {
		for _, s := range []string{session, other} {
			began := time.Now()
			for id := start; id < start+turn && id <= n; id++ {
				if _, err := js.PublishMsgAsync(eventMsg(b, s, uint64(id), time.Time{}, began)); err != nil {
					b.Fatal(err)
				}
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			b.Fatal("stores not acknowledged")
		}
	}
}
