package billing_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// TestInflightStaleReadsWithoutConsumers: Stale lists exactly the records
// not refreshed since the cutoff (not the fresh ones, not the removed or
// claimed ones), with revisions Claim accepts, and creates no consumer on
// the server to do it (it runs every 5 s on every replica).
func TestInflightStaleReadsWithoutConsumers(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	nc, js := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store := billing.NewInflight(js, 1)

	now := time.Now()
	old, fresh := now.Add(-time.Minute), now
	for key, beat := range map[string]time.Time{"a": old, "b": fresh, "c": old, "d": old} {
		if err := store.Put(ctx, key, billing.InflightRecord{Owner: "test", Tenant: "t", Method: "/m", Start: beat, Beat: beat}); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.Put(ctx, "a", billing.InflightRecord{Owner: "test", Beat: old.Add(time.Second)}); err != nil { // refreshed, still stale
		t.Fatal(err)
	}
	if err := store.Delete(ctx, "d"); err != nil { // the call ended
		t.Fatal(err)
	}

	var created atomic.Int64
	sub, err := nc.Subscribe("$JS.EVENT.ADVISORY.CONSUMER.CREATED.>", func(*nats.Msg) { created.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	stale, err := store.Stale(ctx, now.Add(-time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range stale {
		keys = append(keys, s.Key)
		if s.Key == "a" && !s.Record.Beat.Equal(old.Add(time.Second)) {
			t.Errorf("record a: beat %v, want the latest write's %v", s.Record.Beat, old.Add(time.Second))
		}
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"a", "c"}) {
		t.Errorf("stale records %v, want [a c] (b is fresh, d was removed)", keys)
	}
	// The revisions are the records' own: a claim wins once.
	for _, s := range stale {
		if ok, err := store.Claim(ctx, s); err != nil || !ok {
			t.Errorf("claim %s: %v %v, want won", s.Key, ok, err)
		}
		if ok, err := store.Claim(ctx, s); err != nil || ok {
			t.Errorf("second claim %s: %v %v, want lost", s.Key, ok, err)
		}
	}
	if again, err := store.Stale(ctx, now.Add(-time.Second)); err != nil || len(again) != 0 {
		t.Errorf("after the claims: %v %v, want none stale", again, err)
	}

	// A round trip on the advisory subject: anything published before it
	// has been delivered.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := created.Load(); n != 0 {
		t.Errorf("Stale created %d consumers on the server; it must read without one", n)
	}
	if n := srv.Consumers(); n != 0 {
		t.Errorf("%d consumers left on the server", n)
	}
}
