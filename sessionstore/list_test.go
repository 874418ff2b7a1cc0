package sessionstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// Two replicas creating sessions of one tenant at once: every session is
// listed exactly once, newest first, the total is exact, and no read leaves
// a consumer on the server.
func TestJetStreamListAcrossReplicas(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var replicas []*sessionstore.JetStream
	for range 2 {
		_, js := srv.Connect(t)
		s := sessionstore.NewJetStream(js, 1)
		if err := s.EnsureResources(ctx); err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, s)
	}
	tenant := uuid.NewString()
	const perWorker, workers = 40, 6
	var wg sync.WaitGroup
	created := make(chan string, perWorker*workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := replicas[w%2]
			for range perWorker {
				sess := newSession(tenant, time.Now())
				if _, err := s.Create(ctx, sess); err != nil {
					t.Errorf("create: %v", err)
					return
				}
				created <- sess.GetId()
			}
		}()
	}
	wg.Wait()
	close(created)
	want := map[string]bool{}
	for id := range created {
		want[id] = true
	}
	seen := map[string]bool{}
	for offset := 0; ; offset += 17 {
		page, total, err := replicas[offset%2].List(ctx, tenant, offset, 17)
		if err != nil {
			t.Fatal(err)
		}
		if total != len(want) {
			t.Fatalf("total = %d, want %d", total, len(want))
		}
		if len(page) == 0 {
			break
		}
		for _, sess := range page {
			if seen[sess.GetId()] {
				t.Fatalf("session %s listed twice", sess.GetId())
			}
			seen[sess.GetId()] = true
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("listed %d sessions, created %d", len(seen), len(want))
	}
	// Newest first: a session created after the others heads the list.
	last := newSession(tenant, time.Now())
	if _, err := replicas[1].Create(ctx, last); err != nil {
		t.Fatal(err)
	}
	page, _, err := replicas[0].List(ctx, tenant, 0, 1)
	if err != nil || len(page) != 1 || page[0].GetId() != last.GetId() {
		t.Fatalf("newest session is not first: %v %v", page, err)
	}
	if n := srv.Consumers(); n != 0 {
		t.Fatalf("listing left %d consumers", n)
	}
}
