package billing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kgents/kgents-go/streaming/natstest"
)

// BenchmarkPipeline measures the metering pipeline end to end: b.N events
// published (async) into the kgent-metering stream of a real embedded NATS
// server, fetched by the sink, posted in batches to a real HTTP stand-in
// answering 204, and acknowledged. The clock runs from the first publish
// until the stand-in has accepted every id; it reports events/s and the
// duplicates (there should be none). Run it with a fixed count, e.g.
//
//	go test -run '^$' -bench BenchmarkPipeline -benchtime 200000x ./billing/
func BenchmarkPipeline(b *testing.B) {
	for _, bc := range []struct {
		batch, workers int
		confirmEvery   bool
	}{{100, 2, false}, {100, 2, true}, {100, 1, false}, {100, 4, false}, {500, 2, false}} {
		name := fmt.Sprintf("batch=%d/workers=%d", bc.batch, bc.workers)
		if bc.confirmEvery {
			name += "/confirm-every-ack"
		}
		b.Run(name, func(b *testing.B) { benchPipeline(b, bc.batch, bc.workers, bc.confirmEvery) })
	}
}

func benchPipeline(b *testing.B, batch, workers int, confirmEvery bool) {
	ns := natstest.Start(b)
	_, js := ns.Connect(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := EnsureStream(ctx, js, 1); err != nil {
		b.Fatal(err)
	}
	om := newFakeOpenMeter(b, testKey)
	om.mu.Lock()
	om.light = true
	om.mu.Unlock()

	msgs := make([]*nats.Msg, b.N)
	for i := range msgs {
		m, err := NewMsg(sampleEvent(b, fmt.Sprintf("bench-%d", b.N), i, fmt.Sprintf("tenant-%d", i%50)))
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = m
	}

	_, sinkJS := ns.Connect(b)
	p, err := NewProcessor(sinkJS, ProcessorConfig{
		Enabled: true, BaseURL: om.URL(), APIKey: testKey,
		BatchSize: batch, FlushInterval: 100 * time.Millisecond, Concurrency: workers, ConfirmEveryAck: confirmEvery,
		Registerer: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()

	b.ResetTimer()
	start := time.Now()
	publishAsync(b, js, msgs)
	published := time.Since(start)
	waitAccepted(ctx, b, js, om, b.N, start)
	elapsed := time.Since(start)
	b.StopTimer()

	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	st := om.stats()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(st.raw-st.unique), "dups")
	b.ReportMetric(float64(st.requests), "requests")
	b.ReportMetric(published.Seconds(), "publish-s")
	b.ReportMetric(0, "ns/op") // the per-op time of a pipeline says nothing
}

// waitAccepted waits until the stand-in accepted n events, and logs the
// consumer's state whenever progress stalls for a second (to tell a slow
// sink from a starved machine).
func waitAccepted(ctx context.Context, b *testing.B, js jetstream.JetStream, om *fakeOpenMeter, n int, start time.Time) {
	last, lastT := 0, time.Now()
	for {
		u := om.stats().unique
		if u >= n {
			return
		}
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("only %d of %d events arrived", u, n)
		}
		if u != last {
			last, lastT = u, time.Now()
		} else if time.Since(lastT) > time.Second {
			if info, err := js.Consumer(ctx, StreamName, ConsumerName); err == nil {
				ci := info.CachedInfo()
				b.Logf("no progress for 1s at %d events: consumer pending %d, ack pending %d, waiting pulls %d, redelivered %d",
					u, ci.NumPending, ci.NumAckPending, ci.NumWaiting, ci.NumRedelivered)
			}
			lastT = time.Now()
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// publishAsync publishes msgs with a bounded window of unacknowledged
// publishes, failing the benchmark if any is not stored.
func publishAsync(b *testing.B, js jetstream.JetStream, msgs []*nats.Msg) {
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		for {
			f, err := js.PublishMsgAsync(m)
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				continue // the window is full: the stall wait has already throttled us
			}
			if err != nil {
				b.Fatal(err)
			}
			futures[i] = f
			break
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishes not acknowledged")
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.Fatal(err)
		}
	}
}

// BenchmarkPublish is the reference for BenchmarkPipeline: the rate at which
// events can be published into the stream alone (same events, same window).
func BenchmarkPublish(b *testing.B) {
	ns := natstest.Start(b)
	_, js := ns.Connect(b)
	if _, err := EnsureStream(context.Background(), js, 1); err != nil {
		b.Fatal(err)
	}
	msgs := make([]*nats.Msg, b.N)
	for i := range msgs {
		m, err := NewMsg(sampleEvent(b, fmt.Sprintf("pub-%d", b.N), i, "tenant"))
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = m
	}
	b.ResetTimer()
	start := time.Now()
	publishAsync(b, js, msgs)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	b.ReportMetric(0, "ns/op")
}
