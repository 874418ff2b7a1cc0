package sessionstore_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// spoolCounter stands in for the durable publisher: it counts what the
// store spools (the outage path).
type spoolCounter struct{ n atomic.Int64 }

func (s *spoolCounter) PublishDurable(context.Context, streaming.Message) error {
	s.n.Add(1)
	return nil
}

// While NATS is connected, an update that JetStream cannot take (as while
// a stream leader is elected) is retried until JetStream takes it, not
// spooled: a spooled lease renewal is invisible to the other replicas, who
// would see the lease lapse while its turn still runs. Disconnected, or
// once the wait is over, it is spooled as before.
func TestResilientUpdateWaitsOutAnElection(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name      string
		connected bool
		wait      time.Duration
		pause     time.Duration // how long JetStream does not answer
		spooled   bool
	}{
		{name: "connected, election shorter than the wait", connected: true, wait: 10 * time.Second, pause: 700 * time.Millisecond},
		{name: "connected, election longer than the wait", connected: true, wait: 300 * time.Millisecond, pause: 3 * time.Second, spooled: true},
		{name: "disconnected", connected: false, wait: 10 * time.Second, spooled: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := natstest.Start(t)
			_, js := srv.Connect(t)
			inner := sessionstore.NewJetStream(js, 1)
			if err := inner.EnsureResources(context.Background()); err != nil {
				t.Fatal(err)
			}
			inner.FailFast(func() bool { return tc.connected })
			pub := &spoolCounter{}
			store := sessionstore.NewResilient(inner, pub, 16).WithElectionWait(tc.wait)
			ctx := context.Background()
			tenant := uuid.NewString()
			sess := newSession(tenant, time.Now())
			if _, err := store.Create(ctx, sess); err != nil { // spooled when disconnected
				t.Fatal(err)
			}
			spooledBefore := pub.n.Load()
			resumed := make(chan struct{})
			if tc.pause > 0 {
				srv.PauseJetStream()
				go func() {
					defer close(resumed)
					time.Sleep(tc.pause) // the election being simulated
					srv.ResumeJetStream()
				}()
			} else {
				close(resumed)
			}
			uctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			began := time.Now()
			rec, err := store.Update(uctx, tenant, sess.GetId(), func(r *sessionstore.Record) error {
				r.Session.Title = proto.String("renewed")
				return nil
			})
			took := time.Since(began)
			<-resumed
			if err != nil {
				t.Fatalf("update: %v", err)
			}
			if rec.Session.GetTitle() != "renewed" {
				t.Errorf("update returned %q", rec.Session.GetTitle())
			}
			if got := pub.n.Load() > spooledBefore; got != tc.spooled {
				t.Errorf("spooled: %v, want %v (took %v)", got, tc.spooled, took)
			}
			if tc.spooled {
				return
			}
			if took < tc.pause/2 {
				t.Errorf("update returned after %v, before JetStream was back", took)
			}
			inner.FailFast(nil)
			stored, err := inner.Get(ctx, tenant, sess.GetId())
			if err != nil || stored.Session.GetTitle() != "renewed" {
				t.Errorf("JetStream holds %v (%v), want the update", stored, err)
			}
		})
	}
}
