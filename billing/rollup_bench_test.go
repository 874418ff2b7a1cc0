package billing

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/streaming/natstest"
)

// BenchmarkRollup measures the usage rollup on a real embedded NATS: b.N
// events of 50 tenants are stored, then one rollup applies them all (its
// throughput: events/s until _applied reaches the last), then a second
// rollup loads them as its dedupe window (what a replica starting does).
// Both are reported also as a ratio to storing the events (publish-only,
// async, acked), measured in the same run. Run it with a fixed count:
//
//	go test -run '^$' -bench BenchmarkRollup -benchtime 100000x ./billing/
func BenchmarkRollup(b *testing.B) {
	ns := natstest.Start(b)
	_, js := ns.Connect(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		b.Fatal(err)
	}
	msgs := make([]*nats.Msg, b.N)
	for i := range msgs {
		m, err := NewMsg(sampleEvent(b, fmt.Sprintf("rollup-%d", b.N), i, fmt.Sprintf("tenant-%d", i%50)))
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = m
	}
	b.ResetTimer()
	start := time.Now()
	var futs []jetstream.PubAckFuture
	var last uint64
	settle := func() {
		for _, f := range futs {
			select {
			case a := <-f.Ok():
				last = max(last, a.Sequence)
			case err := <-f.Err():
				b.Fatal(err)
			}
		}
		futs = futs[:0]
	}
	for _, m := range msgs {
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			b.Fatal(err)
		}
		if futs = append(futs, f); len(futs) == 2000 {
			settle()
		}
	}
	settle()
	publish := time.Since(start)

	log := slog.New(slog.DiscardHandler)
	r := NewRollup(js, RollupConfig{Logger: log})
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	start = time.Now()
	go func() { defer close(done); r.Run(rctx) }()
	kv, err := js.KeyValue(ctx, RollupBucket)
	for err != nil {
		time.Sleep(time.Millisecond)
		kv, err = js.KeyValue(ctx, RollupBucket)
	}
	for {
		e, err := kv.Get(ctx, appliedKey)
		if err == nil {
			if n, _ := strconv.ParseUint(string(e.Value()), 10, 64); n >= last {
				break
			}
		}
		time.Sleep(time.Millisecond) // polling the rollup's position
	}
	apply := time.Since(start)
	rcancel()
	<-done

	fresh := NewRollup(js, RollupConfig{Logger: log})
	start = time.Now()
	if err := fresh.load(ctx, last); err != nil {
		b.Fatal(err)
	}
	load := time.Since(start)
	b.StopTimer()
	if fresh.ids.len() != b.N {
		b.Fatalf("loaded %d ids, want %d", fresh.ids.len(), b.N)
	}
	rate := func(d time.Duration) float64 { return float64(b.N) / d.Seconds() }
	b.ReportMetric(rate(publish), "publish-events/s")
	b.ReportMetric(rate(apply), "apply-events/s")
	b.ReportMetric(rate(load), "load-events/s")
	b.ReportMetric(publish.Seconds()/apply.Seconds(), "apply/publish")
	b.ReportMetric(publish.Seconds()/load.Seconds(), "load/publish")
}

// BenchmarkRollupDecide measures the rollup's CPU per event without NATS:
// batch messages of 64 events (what a loaded replica's metering stream
// holds) read and decided in ranges of rollupBatch messages, with their
// bucket changes, and committed to an id index already holding a window of
// ids. ns/op is per event.
func BenchmarkRollupDecide(b *testing.B) {
	const perMsg = 64
	const held = 1 << 20
	r := NewRollup(nil, RollupConfig{Logger: slog.New(slog.DiscardHandler)})
	for i := range held {
		r.ids.put(keyOf(EventID("held", TypeAPIRequest, i)), idEntry{seq: uint64(i + 1), at: time.Date(2026, 5, 1, 11, 0, 0, 0, time.UTC).UnixNano()})
	}
	msgs := make([]*jetstream.RawStreamMsg, (b.N+perMsg-1)/perMsg)
	for i := range msgs {
		evs := make([]event.Event, perMsg)
		for j := range evs {
			n := i*perMsg + j
			evs[j] = sampleEvent(b, "decide", n, fmt.Sprintf("tenant-%d", n%50))
		}
		m, err := CallMessage(evs)
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = &jetstream.RawStreamMsg{Subject: m.Subject, Data: m.Data, Sequence: uint64(held + i + 1), Time: time.Date(2026, 5, 1, 12, 0, 0, i, time.UTC)}
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for start := 0; start < len(msgs); start += rollupBatch {
		rng := msgs[start:min(start+rollupBatch, len(msgs))]
		ov := r.ids.overlay()
		changes, err := r.decide(ctx, ov, rng, true)
		if err != nil || len(changes) == 0 {
			b.Fatal(err, len(changes))
		}
		r.recycle(changes) // as step does once the range is applied
		ov.commit()
	}
}
