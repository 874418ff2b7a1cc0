package quota_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/streaming/natstest"
	"github.com/kgents/kgents-go/tenancy"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func identity(rpm, perDay, tokens int64) *tenancy.Identity {
	return &tenancy.Identity{KeyID: "key1", TenantID: "tenant1", Limits: tenancy.Limits{
		RequestsPerMinute: rpm, RequestsPerDay: perDay, TokensPerMonth: tokens,
	}}
}

func retryAfter(t *testing.T, err error) time.Duration {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted {
		t.Fatalf("error %v, want ResourceExhausted", err)
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	t.Fatalf("no RetryInfo in %v", err)
	return 0
}

func TestRequestsPerMinuteExact(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	l := quota.NewLimiter(quota.NewMemory(), c.now)
	id := identity(5, 0, 0)
	for i := 0; i < 5; i++ {
		tk, err := l.Admit(context.Background(), id)
		if err != nil {
			t.Fatalf("request %d refused: %v", i+1, err)
		}
		if got := tk.Headers.Get("x-ratelimit-remaining")[0]; got != string(rune('0'+4-i)) {
			t.Errorf("request %d: remaining %s", i+1, got)
		}
		tk.Finish(codes.OK, 0)
	}
	tk, err := l.Admit(context.Background(), id)
	if ra := retryAfter(t, err); ra != 12*time.Second { // one token every 60/5 s
		t.Errorf("Retry-After %v, want 12s", ra)
	}
	if tk.Headers.Get("retry-after")[0] != "12" || tk.Headers.Get("x-ratelimit-limit")[0] != "5" || tk.Headers.Get("x-ratelimit-reset")[0] != "60" {
		t.Errorf("headers %v", tk.Headers)
	}
	c.add(12 * time.Second)
	if _, err := l.Admit(context.Background(), id); err != nil {
		t.Errorf("after refill: %v", err)
	}
}

func TestRejectedCallsConsumeNothing(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	l := quota.NewLimiter(quota.NewMemory(), c.now)
	id := identity(3, 3, 0)
	for i := 0; i < 10; i++ { // caller errors are refunded, however many
		tk, err := l.Admit(context.Background(), id)
		if err != nil {
			t.Fatalf("refused after %d refunded calls: %v", i, err)
		}
		tk.Finish(codes.InvalidArgument, 0)
	}
	for i := 0; i < 3; i++ {
		tk, err := l.Admit(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		tk.Finish(codes.OK, 0)
	}
	if _, err := l.Admit(context.Background(), id); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("4th real call: %v", err)
	}
	if u := l.Usage("tenant1"); u.RequestsToday != 3 {
		t.Errorf("requests today %d, want 3 (refused and refunded calls not counted)", u.RequestsToday)
	}
}

func TestDailyLimitAndReset(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Date(2026, 11, 22, 23, 59, 0, 0, time.UTC)}
	l := quota.NewLimiter(quota.NewMemory(), c.now)
	id := identity(0, 10, 0)
	for i := 0; i < 10; i++ {
		tk, err := l.Admit(context.Background(), id)
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		tk.Finish(codes.OK, 0)
	}
	_, err := l.Admit(context.Background(), id)
	if ra := retryAfter(t, err); ra != time.Minute {
		t.Errorf("Retry-After %v, want 1m (until 00:00 UTC)", ra)
	}
	c.add(time.Minute) // a new UTC day
	if _, err := l.Admit(context.Background(), id); err != nil {
		t.Errorf("new day: %v", err)
	}
}

func TestMonthlyTokens(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)}
	l := quota.NewLimiter(quota.NewMemory(), c.now)
	id := identity(0, 0, 100)
	tk, err := l.Admit(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	tk.Finish(codes.OK, 90)
	tk, err = l.Admit(context.Background(), id) // 90 < 100: allowed, and may overshoot
	if err != nil || tk.Headers.Get("x-tokens-month")[0] != "90" {
		t.Fatalf("second call: %v %v", err, tk.Headers)
	}
	tk.Finish(codes.OK, 30)
	_, err = l.Admit(context.Background(), id)
	if ra := retryAfter(t, err); ra != 12*time.Hour {
		t.Errorf("Retry-After %v, want 12h (until the 1st, UTC)", ra)
	}
	if !contains(status.Convert(err).Message(), "Monthly token quota exceeded") {
		t.Errorf("message %q", status.Convert(err).Message())
	}
	if u := l.Usage("tenant1"); u.TokensMonth != 120 || u.TokensToday != 120 || u.Period != "2026-11" {
		t.Errorf("usage %+v", u)
	}
	c.add(12 * time.Hour)
	if _, err := l.Admit(context.Background(), id); err != nil {
		t.Errorf("new month: %v", err)
	}
}

func contains(s, sub string) bool { return len(s) >= len(sub) && (s == sub || indexOf(s, sub) >= 0) }

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// TestSharedDailyLimitAcrossReplicas: two limiters with their own KV
// counters on one NATS (two replicas) admit exactly the limit between them.
func TestSharedDailyLimitAcrossReplicas(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var limiters []*quota.Limiter
	for i := 0; i < 2; i++ {
		_, js := srv.Connect(t)
		kv := quota.NewKV(js, quota.KVOptions{SyncInterval: 20 * time.Millisecond})
		go kv.Run(ctx)
		limiters = append(limiters, quota.NewLimiter(kv, nil))
	}
	const limit = 40
	id := identity(0, limit, 0)
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				tk, err := limiters[(w+i)%2].Admit(ctx, id)
				if err == nil {
					admitted.Add(1)
					tk.Finish(codes.OK, 0)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}(w)
	}
	wg.Wait()
	if got := admitted.Load(); got != limit {
		t.Errorf("two replicas admitted %d of 160 requests, want exactly %d", got, limit)
	}
}

func TestCountersFailOpenWithoutNATS(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	kv := quota.NewKV(js, quota.KVOptions{SyncInterval: 10 * time.Millisecond})
	l := quota.NewLimiter(kv, nil)
	id := identity(0, 10, 0)
	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	allowed := 0
	for i := 0; i < 12; i++ {
		short, c := context.WithTimeout(ctx, 200*time.Millisecond)
		if tk, err := l.Admit(short, id); err == nil {
			allowed++
			tk.Finish(codes.OK, 0)
		}
		c()
	}
	if allowed != 10 {
		t.Errorf("with NATS down the local counts still apply: %d allowed, want 10", allowed)
	}
	srv.Restart()
	go kv.Run(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := kv.AddNow(ctx, "tenant1.req.d."+time.Now().UTC().Format("20060102"), 0)
		if err == nil && v == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("local counts not folded in after NATS came back: %d %v", v, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRefundNeverOverfills: tokens given back by calls refused as the
// caller's own error never lift the bucket above its capacity, even when it
// has refilled in the meantime.
func TestRefundNeverOverfills(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	l := quota.NewLimiter(quota.NewMemory(), c.now)
	id := identity(3, 0, 0)
	var held []*quota.Ticket
	for range 2 {
		tk, err := l.Admit(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, tk)
	}
	c.add(time.Minute) // full again while both calls run
	for _, tk := range held {
		tk.Finish(codes.InvalidArgument, 0) // two refunds into a full bucket
	}
	for i := range 3 {
		tk, err := l.Admit(context.Background(), id)
		if err != nil {
			t.Fatalf("call %d of 3 refused: %v", i+1, err)
		}
		if got, want := tk.Headers.Get("x-ratelimit-remaining")[0], string(rune('0'+2-i)); got != want {
			t.Errorf("call %d: remaining %s, want %s", i+1, got, want)
		}
		tk.Finish(codes.OK, 0)
	}
	if _, err := l.Admit(context.Background(), id); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("4th call in a minute with capacity 3: %v, want ResourceExhausted", err)
	}
}

// TestBucketFollowsAChangedLimit: a key's limit changes (a reloaded key
// file, another tier) while its bucket is in use.
func TestBucketFollowsAChangedLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name               string
		from, to           int64
		spend              int
		wantOK             bool
		wantRemaining      string
		wantReset, wantRet string
	}{
		// Full at 10, cut to 3: the tokens above the new capacity are dropped.
		{name: "shrink", from: 10, to: 3, spend: 0, wantOK: true, wantRemaining: "2", wantReset: "20"},
		// Empty at 5, raised to 10: still empty, refilling at the new rate.
		{name: "grow", from: 5, to: 10, spend: 5, wantOK: false, wantRemaining: "0", wantReset: "60", wantRet: "6"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := &clock{t: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
			l := quota.NewLimiter(quota.NewMemory(), c.now)
			if tc.spend == 0 { // create the bucket at the old limit
				tk, err := l.Admit(context.Background(), identity(tc.from, 0, 0))
				if err != nil {
					t.Fatal(err)
				}
				tk.Finish(codes.InvalidArgument, 0) // and give the token back
			}
			for range tc.spend {
				if _, err := l.Admit(context.Background(), identity(tc.from, 0, 0)); err != nil {
					t.Fatal(err)
				}
			}
			tk, err := l.Admit(context.Background(), identity(tc.to, 0, 0))
			if (err == nil) != tc.wantOK {
				t.Fatalf("admitted %v (%v), want %v", err == nil, err, tc.wantOK)
			}
			h := tk.Headers
			if h.Get("x-ratelimit-limit")[0] != strconv.FormatInt(tc.to, 10) || h.Get("x-ratelimit-remaining")[0] != tc.wantRemaining || h.Get("x-ratelimit-reset")[0] != tc.wantReset {
				t.Errorf("headers %v", h)
			}
			if tc.wantRet != "" && (len(h.Get("retry-after")) == 0 || h.Get("retry-after")[0] != tc.wantRet) {
				t.Errorf("retry-after %v, want %s", h.Get("retry-after"), tc.wantRet)
			}
		})
	}
}
