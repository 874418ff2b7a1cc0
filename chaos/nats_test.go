package chaos_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/kgents/kgents-go/streaming/natstest"
)

// NATS stopped in the middle of a streamed turn and started again: the turn
// completes (its reply fsynced in the local spool), and once NATS is back
// the transcript holds both messages and a watcher resuming from before the
// outage gets every event after it, in order, with no gap.
func TestNATSRestartMidStream(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	r := startReplica(t, map[string]string{"NATS_SERVERS": nats.URL(), "SOUL_CHUNK_DELAY": "100ms"})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var s session
	if code, err := r.do(ctx, "POST", "/v1/kgent/sessions", bob, `{}`, &s); err != nil || code != 200 {
		t.Fatalf("create: %d %v", code, err)
	}
	turn, closeTurn, err := r.stream(ctx, "POST", "/v1/kgent/sessions/"+s.ID+"/messages", bob, `{"message":"what should I ship first"}`)
	if err != nil {
		t.Fatal(err)
	}
	defer closeTurn()
	var before uint64 // the last event id seen before the outage
	for {
		ev, err := turn.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Name == "chunk" {
			before, _ = strconv.ParseUint(ev.ID, 10, 64)
			break
		}
	}
	nats.Stop()
	var final uint64
	for {
		ev, err := turn.Next()
		if err != nil {
			t.Fatalf("turn stream broke during the outage: %v", err)
		}
		if ev.Name == "error" {
			t.Fatalf("turn failed during the outage: %s", ev.Data)
		}
		if ev.Name == "complete" {
			final, _ = strconv.ParseUint(ev.ID, 10, 64)
			break
		}
	}
	nats.Restart()

	eventually(t, 30*time.Second, "transcript readable after NATS returns", func() error {
		var hist messages
		code, err := r.do(ctx, "GET", "/v1/kgent/sessions/"+s.ID+"/messages", bob, "", &hist)
		if err != nil {
			return err
		}
		if code != 200 || hist.Total != 2 || len(hist.Messages) != 2 {
			return fmt.Errorf("status %d, %d of %d messages", code, len(hist.Messages), hist.Total)
		}
		return nil
	})
	eventually(t, 30*time.Second, "watch resumes without a gap", func() error {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		sse, closeIt, err := r.stream(wctx, "GET", "/v1/kgent/sessions/"+s.ID+"/events", bob, "", "Last-Event-ID", strconv.FormatUint(before, 10))
		if err != nil {
			return err
		}
		defer closeIt()
		want := before + 1
		for want <= final {
			ev, err := sse.Next()
			if err != nil {
				return fmt.Errorf("after %d of %d..%d: %w", want-1, before+1, final, err)
			}
			id, _ := strconv.ParseUint(ev.ID, 10, 64)
			if ev.Name == "reset" || id != want {
				t.Fatalf("resumed watch sent %s %q, want event %d", ev.Name, ev.ID, want)
			}
			want++
		}
		return nil
	})
}
