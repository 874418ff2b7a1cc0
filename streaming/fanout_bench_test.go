package streaming

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
)

// BenchmarkWatchFanout decides how a replica feeds n watchers of one
// session (the choice the fan-out design left to a benchmark):
//
//   - ordered-consumers: one JetStream ordered consumer per watcher, so the
//     server delivers every event n times over the connection;
//   - hub: one core NATS subscription per session per replica and the
//     in-process Hub handing the decoded event to every watcher's channel
//     (what kgentsd does).
//
// One op is one event published to kgent-events and received by all n
// watchers; ns/op is the time until the last one has it.
func BenchmarkWatchFanout(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("ordered-consumers/watchers=%d", n), func(b *testing.B) { benchOrderedConsumers(b, n) })
		b.Run(fmt.Sprintf("hub/watchers=%d", n), func(b *testing.B) { benchHub(b, n) })
	}
}

const fanoutSession = "6f1f8d8e-8a52-4c0e-9d7e-3f1d2c3b4a59"

func fanoutEvent(b *testing.B, i int) ([]byte, string) {
	ev := &sessionsv1.SessionEvent{
		Id: strconv.Itoa(i + 1), SessionId: fanoutSession,
		Payload: &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: " word", Index: int32(i)}},
	}
	data, err := EncodeEvent("tenant-1", ev)
	if err != nil {
		b.Fatal(err)
	}
	return data, SessionSubject(fanoutSession, "chunk")
}

// publishAll publishes b.N events, each after the previous one reached
// every watcher (wg counts the receipts).
func publishAll(b *testing.B, js jetstream.JetStream, n int, wg *sync.WaitGroup) {
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		data, subject := fanoutEvent(b, i)
		wg.Add(n)
		if _, err := js.Publish(ctx, subject, data); err != nil {
			b.Fatal(err)
		}
		all := make(chan struct{})
		go func() { wg.Wait(); close(all) }()
		select {
		case <-all:
		case <-time.After(30 * time.Second):
			b.Fatalf("event %d did not reach all %d watchers within 30s", i, n)
		}
	}
	b.StopTimer()
}

func benchOrderedConsumers(b *testing.B, n int) {
	c := embeddedConn(b)
	js := c.JetStream()
	var wg sync.WaitGroup
	for range n {
		cons, err := js.OrderedConsumer(context.Background(), EventsStream, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{SessionFilter(fanoutSession)},
			DeliverPolicy:  jetstream.DeliverNewPolicy,
		})
		if err != nil {
			b.Fatal(err)
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			if _, _, err := DecodeEvent(m.Data()); err != nil {
				b.Error(err)
			}
			wg.Done()
		})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(cc.Stop)
	}
	publishAll(b, js, n, &wg)
}

func benchHub(b *testing.B, n int) {
	c := embeddedConn(b)
	hub := NewHub(c, HubOptions{Logger: quietLog})
	var wg sync.WaitGroup
	for range n {
		sub := hub.Subscribe(fanoutSession)
		go func() {
			for range sub.Events() {
				wg.Done()
			}
		}()
		b.Cleanup(func() { sub.Close(); close(sub.c) })
	}
	// The subscription must be registered on the server before publishing.
	if err := c.NATS().Flush(); err != nil {
		b.Fatal(err)
	}
	publishAll(b, c.JetStream(), n, &wg)
}
