package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// BenchmarkWatchLatency measures end-to-end fan-out: a streamed turn runs
// on replica A, n watchers follow the session on replica B over gRPC
// WatchSession, and every event's latency is the time from its creation on
// A (SessionEvent.time, set just before the publish) to its arrival at a
// watcher. One iteration is one turn (~40 events); run it with a fixed
// count, e.g. -benchtime 20x. Reported: p50/p99/max latency, deliveries per
// second and events lost (gaps in a watcher's ids; must be 0).
//
// Paces: "llm" emits a chunk every 20ms (50 chunks/s, a fast LLM
// provider); "fast" every 10ms (100/s); "burst" every chunk at once (the
// template engine with no delay), the worst case for queueing.
func BenchmarkWatchLatency(b *testing.B) {
	for _, pace := range []struct {
		name  string
		delay string
	}{{"llm", "20ms"}, {"fast", "10ms"}, {"burst", "0"}} {
		for _, n := range []int{1, 100, 1000} {
			b.Run(fmt.Sprintf("%s/watchers=%d", pace.name, n), func(b *testing.B) {
				benchWatchLatency(b, n, pace.delay)
			})
		}
	}
}

type latencyWatcher struct {
	lat       []time.Duration
	lastID    uint64
	gaps      atomic.Int64
	completes chan struct{}
}

func benchWatchLatency(b *testing.B, n int, chunkDelay string) {
	nats := natstest.Start(b)
	// Quotas are not under test: 1,000 watch calls would spend a minute's
	// requests.
	tiers := filepath.Join(b.TempDir(), "tiers.json")
	if err := writeTestFile(tiers, `{"enterprise":{"requests_per_minute":0,"requests_per_day":0,"tokens_per_month":0}}`); err != nil {
		b.Fatal(err)
	}
	env := map[string]string{
		"KGENTS_TIERS_FILE":          tiers,
		"NATS_SERVERS":               nats.URL(),
		"LOG_LEVEL":                  "warn",
		"SOUL_CHUNK_DELAY":           chunkDelay,
		"KGENTS_WATCHERS_PER_TENANT": strconv.Itoa(n + 10),
	}
	env["KGENTS_REPLICA_NAME"] = "a"
	a := servertest.Start(b, env)
	env["KGENTS_REPLICA_NAME"] = "b"
	rb := servertest.Start(b, env)

	ctx, cancel := context.WithCancel(servertest.Key(context.Background(), carol))
	defer cancel()
	created, err := sessionsv1.NewSessionsServiceClient(a.Conn).CreateSession(ctx, &sessionsv1.CreateSessionRequest{})
	if err != nil {
		b.Fatal(err)
	}
	id := created.GetSession().GetId()

	// Watchers are spread over one client connection per 100 of them, like
	// many clients sharing a few proxies.
	var conns []*grpc.ClientConn
	for range (n + 99) / 100 {
		c, err := grpc.NewClient(rb.Server.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = c.Close() }()
		conns = append(conns, c)
	}
	watchers := make([]*latencyWatcher, n)
	var wg sync.WaitGroup
	for i := range watchers {
		w := &latencyWatcher{completes: make(chan struct{}, b.N+2)}
		watchers[i] = w
		stream, err := sessionsv1.NewSessionsServiceClient(conns[i/100]).WatchSession(ctx, &sessionsv1.WatchSessionRequest{SessionId: id})
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				resp, err := stream.Recv()
				if err != nil {
					return
				}
				ev := resp.GetEvent()
				w.lat = append(w.lat, time.Since(ev.GetTime().AsTime()))
				if seq, err := strconv.ParseUint(ev.GetId(), 10, 64); err == nil {
					if w.lastID != 0 && seq > w.lastID+1 {
						w.gaps.Add(int64(seq - w.lastID - 1))
					}
					w.lastID = max(w.lastID, seq)
				}
				if ev.GetComplete() != nil || ev.GetError() != nil {
					w.completes <- struct{}{}
				}
			}
		}()
	}

	client := sessionsv1.NewSessionsServiceClient(a.Conn)
	turn := func() {
		stream, err := client.StreamMessage(ctx, &sessionsv1.StreamMessageRequest{
			SessionId: id, Message: "Give me one honest thought about focus and pacing a long project",
		})
		if err != nil {
			b.Fatal(err)
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				b.Fatalf("turn stream: %v", err)
			}
			if ev := resp.GetEvent(); ev.GetComplete() != nil {
				break
			} else if ev.GetError() != nil {
				b.Fatalf("turn failed: %v", ev.GetError())
			}
		}
		deadline := time.After(30 * time.Second)
		for i, w := range watchers {
			select {
			case <-w.completes:
			case <-deadline:
				b.Fatalf("watcher %d of %d did not see the turn complete within 30s", i, n)
			}
		}
	}

	// A warm-up turn proves every watcher is attached before timing starts.
	turn()
	for _, w := range watchers {
		w.lat = w.lat[:0]
	}
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		turn()
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	wg.Wait()

	var all []time.Duration
	var lost int64
	for _, w := range watchers {
		all = append(all, w.lat...)
		lost += w.gaps.Load()
	}
	slices.Sort(all)
	if len(all) == 0 {
		b.Fatal("no events delivered")
	}
	pct := func(p float64) float64 {
		return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(all[len(all)-1].Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(float64(lost), "lost")
	b.ReportMetric(0, "ns/op")
	if lost > 0 {
		b.Errorf("%d events lost across %d watchers", lost, n)
	}
}
