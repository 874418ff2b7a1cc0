package controlplane

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kgents/kgents-go/tenancy"
)

// fakeClock is a test's time, moved by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// writesOf counts the stored revisions of key in a memory bucket.
func writesOf(b bucket, key string) int {
	mb := b.(*memBucket)
	mb.mu.Lock()
	defer mb.mu.Unlock()
	n := 0
	for _, e := range mb.log {
		if e.key == key {
			n++
		}
	}
	return n
}

func storedLastUsed(t *testing.T, s *Service, id string) *time.Time {
	t.Helper()
	e, err := s.keys.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	r, err := decode[keyRecord](e.value)
	if err != nil {
		t.Fatal(err)
	}
	return r.LastUsedAt
}

func pollFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not seen within 5 s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// last_used_at is written at most once a minute per key, by the writer
// goroutine, never on the request path: many concurrent authentications
// within a minute make one write; a use a minute later makes the next.
func TestLastUsedAtAtMostOncePerMinute(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	clock := &fakeClock{t: time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)}
	s := NewMemory(Options{Now: clock.Now})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sys := SystemActor("system")
	ten, err := s.CreateTenant(ctx, sys, "L", "l@example.com", tenancy.TierPro)
	if err != nil {
		t.Fatal(err)
	}
	k, secret, err := s.CreateKey(ctx, sys, ten.ID, KeySpec{Name: "k", Scopes: tenancy.ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	created := writesOf(s.keys, k.ID)
	if storedLastUsed(t, s, k.ID) != nil {
		t.Fatal("a new key has last_used_at")
	}
	// flush waits until every mark queued so far is written: the writer
	// takes marks in order, so once a fresh sentinel key's first mark is
	// stored, every earlier one is too.
	sentinel := 0
	flush := func() {
		t.Helper()
		sentinel++
		sk, ssecret, err := s.CreateKey(ctx, sys, ten.ID, KeySpec{Name: fmt.Sprintf("sentinel%d", sentinel), Scopes: tenancy.ScopeRead})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ssecret); err != nil {
			t.Fatal(err)
		}
		pollFor(t, "the sentinel's mark", func() bool { return storedLastUsed(t, s, sk.ID) != nil })
	}
	// sweep makes the writer clear the marks due by the test's clock.
	sweep := func() {
		done := make(chan struct{})
		s.sweepNow <- done
		<-done
	}
	useMany := func() {
		t.Helper()
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.Authenticate(secret); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}

	t0 := clock.Now()
	useMany()
	flush()
	if got := storedLastUsed(t, s, k.ID); got == nil || !got.Equal(t0) {
		t.Fatalf("last_used_at after the first use: %v, want %v", got, t0)
	}
	if n := writesOf(s.keys, k.ID) - created; n != 1 {
		t.Errorf("50 uses at once made %d writes, want 1", n)
	}
	// The API shows it.
	keys, err := s.ListKeys(ctx, ten.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, kk := range keys {
		if kk.ID == k.ID && (kk.LastUsedAt == nil || !kk.LastUsedAt.Equal(t0)) {
			t.Errorf("ListKeys: last_used_at %v, want %v", kk.LastUsedAt, t0)
		}
	}

	// 59 s later: still within the minute, nothing written.
	clock.Advance(59 * time.Second)
	sweep()
	useMany()
	flush()
	if got := storedLastUsed(t, s, k.ID); !got.Equal(t0) {
		t.Errorf("last_used_at rewritten within the minute: %v", got)
	}
	if n := writesOf(s.keys, k.ID) - created; n != 1 {
		t.Errorf("uses within the minute made %d writes in all, want 1", n)
	}

	// A minute after the first mark: written again, once.
	clock.Advance(time.Second)
	sweep()
	t1 := clock.Now()
	useMany()
	flush()
	if got := storedLastUsed(t, s, k.ID); got == nil || !got.Equal(t1) {
		t.Errorf("last_used_at a minute later: %v, want %v", got, t1)
	}
	if n := writesOf(s.keys, k.ID) - created; n != 2 {
		t.Errorf("writes after two minutes of use: %d, want 2", n)
	}

	// Off the request path: with the store blocked, authentication of a
	// key whose mark is due still answers at once; the mark is written
	// when the store is free again.
	clock.Advance(time.Minute)
	sweep()
	t2 := clock.Now()
	mb := s.keys.(*memBucket)
	mb.mu.Lock()
	answered := make(chan error, 1)
	go func() { _, err := s.Authenticate(secret); answered <- err }()
	select {
	case err := <-answered:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(2 * time.Second):
		mb.mu.Unlock()
		t.Fatal("Authenticate waited for the store")
	}
	mb.mu.Unlock()
	pollFor(t, "the mark written after the store was free", func() bool {
		got := storedLastUsed(t, s, k.ID)
		return got != nil && got.Equal(t2)
	})
	// A revoked key is not marked (its record is left alone).
	if _, err := s.RevokeKey(ctx, sys, ten.ID, k.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(secret); err == nil {
		t.Error("a revoked key authenticates")
	}
}

// With the real clock (a short interval), a key in constant use is marked
// again each interval: the writer's timer clears marks when they are due.
func TestLastUsedAtRealClock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const every = 100 * time.Millisecond
	s := NewMemory(Options{LastUsedEvery: every})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { s.Run(rctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	sys := SystemActor("system")
	ten, err := s.CreateTenant(ctx, sys, "R", "r@example.com", tenancy.TierPro)
	if err != nil {
		t.Fatal(err)
	}
	k, secret, err := s.CreateKey(ctx, sys, ten.ID, KeySpec{Name: "k", Scopes: tenancy.ScopeRead})
	if err != nil {
		t.Fatal(err)
	}
	created := writesOf(s.keys, k.ID)
	start := time.Now()
	for time.Since(start) < 5*every || writesOf(s.keys, k.ID)-created < 3 {
		if time.Since(start) > 10*time.Second {
			t.Fatalf("a key in constant use was marked %d times in 10 s with a %v interval", writesOf(s.keys, k.ID)-created, every)
		}
		if _, err := s.Authenticate(secret); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	if n, most := writesOf(s.keys, k.ID)-created, int(elapsed/every)+1; n > most {
		t.Errorf("%d writes in %v, at most %d at one per %v", n, elapsed, most, every)
	}
}
