package billing_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"strconv"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// The rollup counts exactly what is billed — each event id once, dead
// letters taken back, a re-drive counted again — across a rollup stopped
// mid-stream, a NATS restart, two replicas running it at once, and copies
// of ids stored after the stream's duplicate window (a spool replay, an
// Idempotency-Key replay) whose originals were counted by another replica
// before the one reading the copy started.
func TestRollupCountsEachBilledEventOnce(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if _, err := billing.EnsureStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	tenants := []string{"tenant-a", "tenant-b"}
	want := map[string]*billing.Counts{"tenant-a": {}, "tenant-b": {}}
	credit := func(ev event.Event, sign int64) {
		c := want[ev.Subject()]
		if c.ByType == nil {
			c.ByType = map[string]int64{}
		}
		c.ByType[ev.Type()] += sign
		if c.ByType[ev.Type()] == 0 {
			delete(c.ByType, ev.Type())
		}
		switch ev.Type() {
		case billing.TypeAPIRequest:
			c.Requests += sign
			var d billing.APIRequest
			_ = ev.DataAs(&d)
			if d.StatusCode >= 400 {
				c.Errors += sign
			}
		case billing.TypeLLMTokens:
			c.DialogueTurns += sign
			c.Tokens += 7 * sign
		case billing.TypeAgenteseInvoke:
			c.AgenteseInvocations += sign
		case billing.TypeSessionCreate:
			c.SessionsCreated += sign
		}
	}
	store := func(subject, msgID string, ev event.Event) {
		t.Helper()
		m, err := billing.NewMsg(ev)
		if err != nil {
			t.Fatal(err)
		}
		m.Subject = subject
		m.Header.Set(jetstream.MsgIDHeader, msgID)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	var events []event.Event
	publish := func(count int) {
		t.Helper()
		for range count {
			n := len(events) + 1
			tenant := tenants[n%2]
			at := day.Add(time.Duration(n%24) * time.Hour)
			id := fmt.Sprintf("ev-%d", n)
			var ev event.Event
			var err error
			switch n % 4 {
			case 0:
				ev, err = billing.NewAPIRequest(id, tenant, at, billing.APIRequest{Endpoint: "/v1/x", Method: "POST", StatusCode: []int{200, 429}[n%8/4]})
			case 1:
				ev, err = billing.NewLLMTokens(id, tenant, at, billing.LLMTokens{TokensIn: 3, TokensOut: 4})
			case 2:
				ev, err = billing.NewAgenteseInvoke(id, tenant, at, billing.AgenteseInvoke{Path: "world.house.manifest"})
			default:
				ev, err = billing.NewSessionCreate(id, tenant, at, billing.SessionCreate{SessionID: "s"})
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := billing.Publish(ctx, js, ev); err != nil {
				t.Fatal(err)
			}
			events = append(events, ev)
			credit(ev, 1)
		}
	}
	// A copy stored after the duplicate window: another Nats-Msg-Id gets
	// it past JetStream's dedupe, as 30 s would. Billed once: no credit.
	copies := 0
	copyOf := func(ev event.Event) {
		copies++
		store(billing.EventSubject(ev.Type()), fmt.Sprintf("late-copy-%d-%s", copies, ev.ID()), ev)
	}
	// What the sink stores when OpenMeter rejects an event: not billed.
	deadLetter := func(ev event.Event, nth int) {
		store(billing.DeadLetterSubject(ev.Type()), fmt.Sprintf("dead-%s-%d", ev.ID(), nth), ev)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	run := func(r *billing.Rollup) (stop func()) {
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); r.Run(rctx) }()
		return func() { rcancel(); <-done }
	}

	stopA := run(billing.NewRollup(js, billing.RollupConfig{Logger: log}))
	publish(700)
	for i := 96; i < 700; i += 97 {
		copyOf(events[i]) // while the replica that counted the original runs
	}
	stopA() // a rollup stopped mid-stream
	publish(300)
	srv.Restart()
	_, js2 := srv.Connect(t)
	js = js2
	// Copies and dead letters of events replica A counted, read by replicas
	// that start after it stopped: they load the window first.
	for i := 13; i < 1000; i += 101 {
		copyOf(events[i])
	}
	deadLetter(events[5], 1) // OpenMeter rejected it: taken back
	credit(events[5], -1)
	deadLetter(events[5], 2) // dead-lettered again after its ack was lost: taken back once
	copyOf(events[96])       // a copy of an id copied before: still once
	deadLetter(events[96], 1)
	credit(events[96], -1) // the copy was rejected: the id was not billed
	stopB := run(billing.NewRollup(js2, billing.RollupConfig{Logger: log}))
	stopC := run(billing.NewRollup(js2, billing.RollupConfig{Logger: log})) // a second replica at once
	defer stopB()
	defer stopC()
	publish(500)
	copyOf(events[1200])
	copyOf(events[1201])
	deadLetter(events[1300], 1)
	credit(events[1300], -1)
	// The operator re-drives a dead letter after fixing its cause
	// (docs/billing.md): OpenMeter takes it now.
	store(billing.EventSubject(events[5].Type()), "redrive-"+events[5].ID(), events[5])
	credit(events[5], 1)
	copyOf(events[5]) // and a copy of the re-drive is billed once
	// A call and its Idempotency-Key replay in one batch message (the
	// metering builder batches the calls of a moment): the replay's events
	// carry the run's ids and are billed once.
	run1, err := billing.NewAPIRequest("ev-run-1", "tenant-a", day.Add(3*time.Hour), billing.APIRequest{Endpoint: "/v1/x", Method: "POST", StatusCode: 200})
	if err != nil {
		t.Fatal(err)
	}
	other, err := billing.NewSessionCreate("ev-run-2", "tenant-a", day.Add(3*time.Hour), billing.SessionCreate{SessionID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := billing.CallMessage([]event.Event{run1, other, run1})
	if err != nil {
		t.Fatal(err)
	}
	bm := nats.NewMsg(batch.Subject)
	bm.Data = batch.Data
	bm.Header.Set(jetstream.MsgIDHeader, batch.MsgID)
	if _, err := js2.PublishMsg(ctx, bm); err != nil {
		t.Fatal(err)
	}
	credit(run1, 1)
	credit(other, 1)
	start := time.Now()

	reader := billing.NewRollup(js2, billing.RollupConfig{Logger: log})
	deadline := time.Now().Add(45 * time.Second)
	for {
		got := map[string]billing.Counts{}
		for _, tenant := range tenants {
			pts, err := reader.History(ctx, tenant, day, day.Add(24*time.Hour), billing.Daily)
			if err == nil && len(pts) == 1 {
				got[tenant] = pts[0].Counts
			}
		}
		// The hourly buckets are written in the same pass as the daily one,
		// but not at the same instant: wait for both.
		var hourly billing.Counts
		hours, err := reader.History(ctx, "tenant-a", day, day.Add(24*time.Hour), billing.Hourly)
		if err == nil && len(hours) == 24 {
			for _, p := range hours {
				addCounts(&hourly, p.Counts)
			}
		}
		if equalCounts(got["tenant-a"], *want["tenant-a"]) && equalCounts(got["tenant-b"], *want["tenant-b"]) && equalCounts(hourly, *want["tenant-a"]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("history %+v,\nwant %+v / %+v;\nhourly buckets of tenant-a add up to %+v", got, *want["tenant-a"], *want["tenant-b"], hourly)
		}
		time.Sleep(50 * time.Millisecond) // polling a real read, bounded by the deadline
	}
	t.Logf("history (daily and hourly) equal to what is billed, %v after the last publish", time.Since(start).Round(time.Millisecond))
	if n := srv.Consumers(); n != 0 {
		t.Fatalf("the rollup left %d consumers", n)
	}
}

// A copy of an id stored after USAGE_DEDUPE_WINDOW is counted again: the
// window is the rollup's memory (docs/billing.md).
func TestRollupDedupeWindowEnds(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := billing.EnsureStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	ev, err := billing.NewSessionCreate("ev-window", "tenant-w", at, billing.SessionCreate{SessionID: "s"})
	if err != nil {
		t.Fatal(err)
	}
	const window = 2 * time.Second
	r := billing.NewRollup(js, billing.RollupConfig{DedupeWindow: window, Logger: slog.New(slog.DiscardHandler)})
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(rctx) }()
	defer func() { rcancel(); <-done }()
	kv, err := js.KeyValue(ctx, billing.RollupBucket)
	for err != nil && ctx.Err() == nil { // the rollup creates it
		time.Sleep(20 * time.Millisecond)
		kv, err = js.KeyValue(ctx, billing.RollupBucket)
	}
	// storeAs stores the event under msgID and waits until the rollup has
	// taken it in (its position is past it), returning its stream time.
	storeAs := func(msgID string) time.Time {
		t.Helper()
		m, _ := billing.NewMsg(ev)
		m.Header.Set(jetstream.MsgIDHeader, msgID)
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		stored := time.Now()
		poll(t, 20*time.Second, "the rollup past sequence "+fmt.Sprint(ack.Sequence), func() bool {
			e, err := kv.Get(ctx, "_applied")
			if err != nil {
				return false
			}
			applied, err := strconv.ParseUint(string(e.Value()), 10, 64)
			return err == nil && applied >= ack.Sequence
		})
		return stored
	}
	sessions := func() int64 {
		pts, err := r.History(ctx, "tenant-w", at, at.Add(time.Hour), billing.Hourly)
		if err != nil || len(pts) != 1 {
			t.Fatalf("history: %v", err)
		}
		return pts[0].SessionsCreated
	}
	first := storeAs("a")
	storeAs("b") // within the window: a copy
	if got := sessions(); got != 1 {
		t.Fatalf("after a copy within the window: %d sessions, want 1", got)
	}
	// The window is measured in stream time: let it pass.
	for time.Since(first) <= window+200*time.Millisecond {
		time.Sleep(50 * time.Millisecond) // the clock must move; nothing else to wait for
	}
	storeAs("c") // after the window: counted again
	if got := sessions(); got != 2 {
		t.Fatalf("after a copy past the window: %d sessions, want 2", got)
	}
}

// poll waits until cond holds, failing the test after timeout.
func poll(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond) // polling a real condition, bounded by the deadline
	}
}

func addCounts(dst *billing.Counts, c billing.Counts) {
	dst.Requests += c.Requests
	dst.Errors += c.Errors
	dst.Tokens += c.Tokens
	dst.DialogueTurns += c.DialogueTurns
	dst.AgenteseInvocations += c.AgenteseInvocations
	dst.SessionsCreated += c.SessionsCreated
	for k, v := range c.ByType {
		if dst.ByType == nil {
			dst.ByType = map[string]int64{}
		}
		dst.ByType[k] += v
	}
}

func equalCounts(a, b billing.Counts) bool {
	return a.Requests == b.Requests && a.Errors == b.Errors && a.Tokens == b.Tokens && a.DialogueTurns == b.DialogueTurns &&
		a.AgenteseInvocations == b.AgenteseInvocations && a.SessionsCreated == b.SessionsCreated && maps.Equal(a.ByType, b.ByType)
}
