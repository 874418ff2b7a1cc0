package streaming

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kgents/kgents-go/streaming/natstest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Run: go test -run '^$' -bench . -benchmem ./streaming/

// embeddedConn is kgentsd's embedded mode: an in-process nats-server with a
// file-backed JetStream, reached in process.
func embeddedConn(b *testing.B) *Conn {
	b.Helper()
	c, err := Connect(context.Background(), Options{Enabled: true, EmbeddedPort: -1, StoreDir: b.TempDir(), Logger: quietLog})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close(context.Background()) })
	createStream(b, c.JetStream())
	return c
}

func benchPublisher(b *testing.B, c *Conn, queue int) *Publisher {
	b.Helper()
	p, err := NewPublisher(c, PublisherOptions{
		SpoolDir:   filepath.Join(b.TempDir(), "spool"),
		Logger:     quietLog,
		Registerer: prometheus.NewRegistry(),
		QueueSize:  queue,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Close(context.Background()) })
	return p
}

var benchData = []byte(`{"type":"chunk","session_id":"3f2a9c1e-0000-4000-8000-000000000000","text":"hello there, this is a chunk","index":7}`) // 128 B

func benchMsg(i int) Message {
	return Message{Subject: "kgent.session.3f2a9c1e.chunk", MsgID: "bench-" + strconv.Itoa(i), Data: benchData}
}

func reportRate(b *testing.B, start time.Time) {
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkPublish: fire-and-forget Publish to JetStream (embedded, file
// storage), until every message is acknowledged. "direct" has a queue large
// enough for the whole burst; "burst" has the default queue (8192), so most
// of the burst spills to the spool and is replayed.
func BenchmarkPublish(b *testing.B) {
	b.Run("direct", func(b *testing.B) { benchPublish(b, 1<<22) })
	b.Run("burst", func(b *testing.B) { benchPublish(b, 0) })
}

func benchPublish(b *testing.B, queue int) {
	p := benchPublisher(b, embeddedConn(b), queue)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		p.Publish(benchMsg(i))
	}
	if err := p.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	// A burst beyond QueueSize spills to the spool: count until it is replayed too.
	for h := p.Health(); h.SpoolDepth > 0 || h.Mode != ModeJetStream; h = p.Health() {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	reportRate(b, start)
	b.ReportMetric(metricValue(p.met.replayed)/float64(b.N), "replayed/op")
}

// BenchmarkPublishDurableParallel: PublishDurable from many goroutines
// (each call waits for its JetStream ack).
func BenchmarkPublishDurableParallel(b *testing.B) {
	p := benchPublisher(b, embeddedConn(b), 0)
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := p.PublishDurable(context.Background(), benchMsg(int(n.Add(1)))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportRate(b, start)
}

// downConn is a connection to a NATS that is not running: the publisher
// spools everything.
func downConn(b *testing.B) *Conn {
	srv := natstest.Start(b)
	srv.Stop()
	return testConnect(b, srv)
}

// BenchmarkSpoolAppend: Publish while NATS is down (one write(2) per
// message), then one Flush (group-commit fsync).
func BenchmarkSpoolAppend(b *testing.B) {
	p := benchPublisher(b, downConn(b), 0)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		p.Publish(benchMsg(i))
	}
	if err := p.Flush(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	reportRate(b, start)
	b.ReportMetric(float64(b.N)/float64(max(1, p.commit.fsyncs.Load())), "msgs/fsync")
}

// BenchmarkSpoolDurableParallel: PublishDurable from many goroutines while
// NATS is down: each returns after the group-commit fsync covering it.
func BenchmarkSpoolDurableParallel(b *testing.B) {
	p := benchPublisher(b, downConn(b), 0)
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := p.PublishDurable(context.Background(), benchMsg(int(n.Add(1)))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	reportRate(b, start)
	b.ReportMetric(float64(b.N)/float64(max(1, p.commit.fsyncs.Load())), "msgs/fsync")
}

// BenchmarkSpan measures what a span per message would cost, to decide
// whether fire-and-forget publishes get one (they do not; see errorSpan).
func BenchmarkSpan(b *testing.B) {
	for _, tc := range []struct {
		name string
		tp   trace.TracerProvider
	}{
		{"noop", noop.NewTracerProvider()},
		{"sdk-sampled", sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tr := tc.tp.Tracer("bench")
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				_, span := tr.Start(context.Background(), "nats.publish", trace.WithSpanKind(trace.SpanKindProducer),
					trace.WithAttributes(
						attribute.String("messaging.system", "nats"),
						attribute.String("messaging.destination.name", "kgent.session.x.chunk"),
						attribute.String("messaging.message.id", fmt.Sprint(i)),
					))
				span.End()
			}
		})
	}
}

// BenchmarkRawPublishAsync is the baseline: nats.go's own async publish
// (same server, same message, 1024 in flight), no publisher around it.
func BenchmarkRawPublishAsync(b *testing.B) {
	c := embeddedConn(b)
	js, err := jetstream.New(c.NATS(), jetstream.WithPublishAsyncMaxPending(1024))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		m := benchMsg(i)
		if _, err := js.PublishMsgAsync(m.natsMsg()); err != nil {
			b.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	b.StopTimer()
	reportRate(b, start)
}
