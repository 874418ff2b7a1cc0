package streaming

import (
	"context"
	"strconv"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/streaming/natstest"
)

func spanAttr(s sdktrace.ReadOnlySpan, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// TestConsumeSpans: a live event a replica receives from NATS is one
// nats.consume span (per replica, not per watcher) and a history replay is
// one nats.history.replay span, both naming the session.
func TestConsumeSpans(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	c := testConnect(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := EnsureEventsStream(ctx, c.JetStream(), 1); err != nil {
		t.Fatal(err)
	}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	const session = "0b5b6f0e-2c1d-4c8e-9a57-1f4e2d3c4b5a"

	hub := NewHub(c, HubOptions{Logger: quietLog, Tracer: tp})
	sub1, sub2 := hub.Subscribe(session), hub.Subscribe(session)
	defer sub1.Close()
	defer sub2.Close()
	if err := c.NATS().Flush(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		ev := &sessionsv1.SessionEvent{Id: strconv.Itoa(i), SessionId: session,
			Payload: &sessionsv1.SessionEvent_Chunk{Chunk: &soulv1.DialogueChunk{Text: "x", Index: int32(i)}}}
		data, err := EncodeEvent("t1", ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.JetStream().Publish(ctx, SessionSubject(session, "chunk"), data); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*Subscription{sub1, sub2} {
			select {
			case <-s.Events():
			case <-time.After(5 * time.Second):
				t.Fatal("event not delivered to a watcher")
			}
		}
	}

	var last uint64
	if _, got, err := NewHistory(c.JetStream(), HistoryOptions{Tracer: tp}).Replay(ctx, session, 0, 0, nil, func(*sessionsv1.SessionEvent) error { return nil }); err != nil {
		t.Fatal(err)
	} else {
		last = got
	}
	if last != 2 {
		t.Fatalf("replay ended at %d, want 2", last)
	}

	// A consume span ends just after its event is handed to the watchers.
	ended := func(name string) []sdktrace.ReadOnlySpan {
		var out []sdktrace.ReadOnlySpan
		for _, s := range rec.Ended() {
			if s.Name() == name {
				out = append(out, s)
			}
		}
		return out
	}
	for deadline := time.Now().Add(2 * time.Second); len(ended("nats.consume")) < 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	consumeSpans, replaySpans := ended("nats.consume"), ended("nats.history.replay")
	for _, s := range consumeSpans {
		if v, ok := spanAttr(s, "kgents.session_id"); !ok || v.AsString() != session {
			t.Errorf("nats.consume without the session: %v", s.Attributes())
		}
	}
	for _, s := range replaySpans {
		if v, ok := spanAttr(s, "kgents.last"); !ok || v.AsInt64() != 2 {
			t.Errorf("nats.history.replay attributes %v", s.Attributes())
		}
	}
	consumes, replays := len(consumeSpans), len(replaySpans)
	if consumes != 2 || replays != 1 {
		t.Errorf("%d nats.consume spans (want 2: one per event, not per watcher), %d replay spans (want 1)", consumes, replays)
	}
}
