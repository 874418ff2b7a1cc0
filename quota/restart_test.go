package quota_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// TestRestartedReplicaSeesTheSharedCounters: a tenant spent its monthly
// tokens; a replica that starts afterwards (nothing in memory) must refuse
// its first call and report the real usage at once — not admit calls, and
// report zero, until its first sync (the 4× overshoot after a restart).
func TestRestartedReplicaSeesTheSharedCounters(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	id := identity(0, 0, 1000)

	// The first life of the replica: the month's tokens are spent.
	_, js := srv.Connect(t)
	before := quota.NewKV(js, quota.KVOptions{})
	l := quota.NewLimiter(before, nil)
	tk, err := l.Admit(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	tk.Finish(codes.OK, 1000)
	before.Sync(ctx)

	// A new process: its sync loop has not run yet (a long interval makes
	// that certain), only the load at start-up.
	_, js2 := srv.Connect(t)
	after := quota.NewKV(js2, quota.KVOptions{SyncInterval: time.Hour})
	if err := after.Load(ctx); err != nil {
		t.Fatal(err)
	}
	l2 := quota.NewLimiter(after, nil)
	if u := l2.Usage(id.TenantID); u.TokensMonth != 1000 || u.TokensToday != 1000 || u.RequestsToday != 1 {
		t.Errorf("a restarted replica reports %+v; want the shared 1000 tokens and 1 request", u)
	}
	if _, err := l2.Admit(ctx, id); err == nil {
		t.Error("a restarted replica admitted a call of a tenant over its monthly tokens")
	}

	// A counter first touched after the load (another tenant, or one this
	// replica dropped from memory) is read before it is trusted.
	other := identity(0, 0, 500)
	other.TenantID, other.KeyID = "tenant2", "key2"
	tk, err = l.Admit(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	tk.Finish(codes.OK, 500)
	before.Sync(ctx)
	if _, err := l2.Admit(ctx, other); err == nil {
		t.Error("a counter first used after the load was trusted at zero")
	}
}

// TestTokenOvershootIsBoundedByTheCallsInFlight: the token quota is
// checked before a call and debited after, so calls admitted while the
// tenant is under its limit may all finish over it — but only those: the
// overshoot is at most the tokens of the calls in flight when the limit
// was crossed, and the next call is refused.
func TestTokenOvershootIsBoundedByTheCallsInFlight(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, js := srv.Connect(t)
	kv := quota.NewKV(js, quota.KVOptions{SyncInterval: 10 * time.Millisecond})
	go kv.Run(ctx)
	l := quota.NewLimiter(kv, nil)
	const limit, perCall, inFlight = 1000, 300, 5
	id := identity(0, 0, limit)
	tk, err := l.Admit(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	tk.Finish(codes.OK, limit-1) // one token left

	// inFlight calls are admitted together (all see 999 < 1000)...
	tickets := make([]*quota.Ticket, inFlight)
	for i := range tickets {
		if tickets[i], err = l.Admit(ctx, id); err != nil {
			t.Fatalf("call %d refused under the limit: %v", i, err)
		}
	}
	// ...and finish at once, each with perCall tokens.
	var wg sync.WaitGroup
	for _, tk := range tickets {
		wg.Go(func() { tk.Finish(codes.OK, perCall) })
	}
	wg.Wait()
	used := l.Usage(id.TenantID).TokensMonth
	if over := used - limit; over > inFlight*perCall {
		t.Errorf("overshoot %d tokens; the bound is the calls in flight: %d × %d", over, inFlight, perCall)
	}
	if _, err := l.Admit(ctx, id); err == nil {
		t.Errorf("a call admitted at %d of %d tokens", used, limit)
	}
}
