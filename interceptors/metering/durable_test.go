package metering_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"google.golang.org/grpc"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/streaming/natstest"
)

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ids(evs []event.Event) map[string]string {
	m := map[string]string{}
	for _, e := range evs {
		m[e.Type()+"/"+e.ID()] = e.ID()
	}
	return m
}

// TestKilledCallIsBilledByAnotherReplica: a streamed call runs on replica
// A, which writes a durable record of what the call served while it runs.
// A dies (its loop stops without cleaning up, its call never ends there).
// Replica B's sweeper finds the record unrefreshed and bills the call —
// its api.request as interrupted and the usage recorded so far — with the
// ids the call's own end would have used, so if A's events had got out
// after all, OpenMeter would count each once.
func TestKilledCallIsBilledByAnotherReplica(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, jsA := srv.Connect(t)
	_, jsB := srv.Connect(t)
	opts := metering.DurableOptions{Tick: 20 * time.Millisecond, MinAge: 50 * time.Millisecond, Refresh: 100 * time.Millisecond, DeadAfter: 400 * time.Millisecond}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	storeA := billing.NewInflight(jsA, 1)
	capA, capB := &capture{}, &capture{}
	ctxA, killA := context.WithCancel(context.Background())
	defer killA()
	optsA := opts
	optsA.Owner = "replica-a"
	meterA := metering.New(capA, log, nil).Durable(ctxA, storeA, optsA)
	optsB := opts
	optsB.Owner = "replica-b"
	meterB := metering.New(capB, log, nil).Durable(context.Background(), billing.NewInflight(jsB, 1), optsB)
	t.Cleanup(func() { _ = meterB.Close(context.Background()) })

	release := make(chan struct{})
	ended := make(chan error, 1)
	go func() {
		ss := &fakeStream{ctx: tenantCtx("")}
		ended <- meterA.Stream()(nil, ss, &grpc.StreamServerInfo{FullMethod: "/kgents.sessions.v1.SessionsService/StreamMessage", IsServerStream: true},
			func(_ any, s grpc.ServerStream) error {
				metering.RecordSession(s.Context(), metering.SessionUsage{SessionID: "s1", Role: "user", MessageLength: 12})
				<-release
				return nil
			})
	}()

	// The record exists while the call runs.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	waitFor(t, "a durable record of the running call", func() bool {
		recs, err := storeA.Stale(ctx, time.Now().Add(time.Hour))
		return err == nil && len(recs) == 1 && len(recs[0].Record.Events) == 2
	})
	// Refreshed, it is the same record (one key per call), not another.
	first, err := storeA.Stale(ctx, time.Now().Add(time.Hour))
	if err != nil || len(first) != 1 {
		t.Fatalf("records: %v, %v", first, err)
	}
	waitFor(t, "the record refreshed", func() bool {
		recs, _ := storeA.Stale(ctx, time.Now().Add(time.Hour))
		for _, r := range recs {
			if r.Record.Beat.After(first[0].Record.Beat) {
				return true
			}
		}
		return false
	})
	if recs, err := storeA.Stale(ctx, time.Now().Add(time.Hour)); err != nil || len(recs) != 1 || recs[0].Key != first[0].Key {
		t.Errorf("after a refresh: %d records (first key %s), %v; want the one record, its key kept", len(recs), first[0].Key, err)
	}
	if n := len(capA.byType("api.request")) + len(capB.byType("api.request")); n != 0 {
		t.Fatalf("%d api.request events before the call ended or died", n)
	}

	// kill -9 of replica A: its loop stops, nothing is cleaned up.
	killA()
	waitFor(t, "replica B billing the dead call", func() bool {
		return len(capB.byType("api.request")) == 1 && len(capB.byType("session.message")) == 1
	})
	if d := data(t, capB.byType("api.request")[0]); d["status_code"] != 503.0 || d["grpc_code"] != 14.0 || d["endpoint"] != "/kgents.sessions.v1.SessionsService/StreamMessage" {
		t.Errorf("interrupted call billed as %v", d)
	}
	if d := data(t, capB.byType("session.message")[0]); d["role"] != "user" || d["message_length"] != 12.0 {
		t.Errorf("served usage billed as %v", d)
	}
	if s := capB.byType("api.request")[0].Subject(); s != "tenant-1" {
		t.Errorf("subject %q", s)
	}

	// Had A's own end got out, its events would carry the same ids.
	close(release)
	if err := <-ended; err != nil {
		t.Fatal(err)
	}
	capA.mu.Lock()
	gotA := ids(capA.events)
	capA.mu.Unlock()
	capB.mu.Lock()
	gotB := ids(capB.events)
	capB.mu.Unlock()
	for k := range gotB {
		if _, ok := gotA[k]; !ok {
			t.Errorf("the sweeper's %s has no twin among the call's own events %v: it would be billed twice", k, gotA)
		}
	}
	// The record was swept once: nothing is left.
	if recs, err := storeA.Stale(ctx, time.Now().Add(time.Hour)); err != nil || len(recs) != 0 {
		t.Errorf("records left: %v %v", recs, err)
	}
}

// TestEndedCallLeavesNoRecord: a long call that ends normally has its
// record removed; no sweeper bills it again.
func TestEndedCallLeavesNoRecord(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	store := billing.NewInflight(js, 1)
	c := &capture{}
	m := metering.New(c, slog.New(slog.NewTextHandler(io.Discard, nil)), nil).Durable(context.Background(), store, fastDurable)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := longCall(t, ctx, m, store, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the record removed", func() bool {
		recs, err := store.Stale(ctx, time.Now().Add(time.Hour))
		return err == nil && len(recs) == 0
	})
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(c.byType("api.request")); n != 1 {
		t.Errorf("%d api.request events for one call", n)
	}
}

// TestSkippedMethodsGetNoRecord: a long watch (a skipped method) gets no
// durable record, while a long turn started at the same time does.
func TestSkippedMethodsGetNoRecord(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	store := billing.NewInflight(js, 1)
	const watch = "/kgents.sessions.v1.SessionsService/WatchSession"
	opts := metering.DurableOptions{Tick: 20 * time.Millisecond, MinAge: 50 * time.Millisecond, Refresh: 100 * time.Millisecond,
		DeadAfter: time.Minute, Skip: []string{watch}}
	meter := metering.New(&capture{}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil).Durable(context.Background(), store, opts)
	t.Cleanup(func() { _ = meter.Close(context.Background()) })
	release := make(chan struct{})
	done := make(chan error, 2)
	for _, method := range []string{watch, "/kgents.sessions.v1.SessionsService/StreamMessage"} {
		go func() {
			done <- meter.Stream()(nil, &fakeStream{ctx: tenantCtx("")}, &grpc.StreamServerInfo{FullMethod: method, IsServerStream: true},
				func(any, grpc.ServerStream) error { <-release; return nil })
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var recs []billing.StaleInflight
	waitFor(t, "the turn's record", func() bool {
		var err error
		recs, err = store.Stale(ctx, time.Now().Add(time.Hour))
		return err == nil && len(recs) >= 1
	})
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if len(recs) != 1 {
		t.Fatalf("%d records for one turn and one (skipped) watch, want 1", len(recs))
	}
}

// TestCutOffReplicaDoesNotBillItsOwnEndedCall: a replica loses JetStream
// while a long call runs; the call ends meanwhile (its record cannot be
// removed) and stays cut off for longer than DeadAfter. When JetStream
// returns, the record is removed (the removal was kept, not dropped) and
// the replica's own sweeper never bills the stale copy: the call is billed
// once, as it ended (200), not as an interrupted call (503).
func TestCutOffReplicaDoesNotBillItsOwnEndedCall(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	store := billing.NewInflight(js, 1)
	c := &capture{}
	m := metering.New(c, slog.New(slog.NewTextHandler(io.Discard, nil)), nil).Durable(context.Background(), store, fastDurable)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := longCall(t, ctx, m, store, srv.PauseJetStream); err != nil {
		t.Fatal(err)
	}
	// Cut off for several DeadAfters and sweeps; then back.
	time.Sleep(4 * fastDurable.DeadAfter) // the outage itself: nothing to wait for
	srv.ResumeJetStream()
	waitFor(t, "the record removed", func() bool {
		recs, err := store.Stale(ctx, time.Now().Add(time.Hour))
		return err == nil && len(recs) == 0
	})
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := c.byType("api.request")
	if len(reqs) != 1 {
		t.Fatalf("%d api.request events for one call, want 1", len(reqs))
	}
	if d := data(t, reqs[0]); d["status_code"] != 200.0 {
		t.Errorf("the call was billed as %v, want its own end (200)", d)
	}
}

// fastDurable is the loop's timing in these tests: a record after 40 ms,
// rewritten every 60 ms, stale after 200 ms.
var fastDurable = metering.DurableOptions{Tick: 20 * time.Millisecond, MinAge: 40 * time.Millisecond, Refresh: 60 * time.Millisecond, DeadAfter: 200 * time.Millisecond}

// longCall runs one streamed call through m's interceptor that lasts until
// store holds its record, then calls during (if set) and ends.
func longCall(t *testing.T, ctx context.Context, m *metering.Meter, store *billing.Inflight, during func()) error {
	t.Helper()
	return m.Stream()(nil, &fakeStream{ctx: tenantCtx("")}, &grpc.StreamServerInfo{FullMethod: "/x.Y/Z", IsServerStream: true},
		func(_ any, s grpc.ServerStream) error {
			waitFor(t, "the record", func() bool {
				recs, err := store.Stale(ctx, time.Now().Add(time.Hour))
				return err == nil && len(recs) == 1
			})
			if during != nil {
				during()
			}
			return nil
		})
}
