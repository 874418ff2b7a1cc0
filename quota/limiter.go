package quota

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kgents/kgents-go/tenancy"
)

// Limiter decides whether a call may run.
type Limiter struct {
	counters Counters
	now      func() time.Time
	buckets  sync.Map // key id -> *bucket
}

// NewLimiter returns a limiter over counters.
func NewLimiter(c Counters, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{counters: c, now: now}
}

// Counter keys: <tenant>.<what>.<d|m>.<period>, UTC calendar.
func dayKey(tenant, what string, t time.Time) string {
	return tenant + "." + what + ".d." + t.Format("20060102")
}

func monthKey(tenant, what string, t time.Time) string {
	return tenant + "." + what + ".m." + t.Format("200601")
}

// Ticket is an admitted call: settle it with Finish.
type Ticket struct {
	l       *Limiter
	tenant  string
	now     time.Time
	bucket  *bucket
	admKey  string // the day's admissions, when reserved from a lease
	Headers metadata.MD
}

// Admit checks the caller's limits and reserves one request. The headers
// (X-RateLimit-*, X-Tokens-Month) are returned also on refusal; the error is
// ResourceExhausted with a RetryInfo detail.
func (l *Limiter) Admit(ctx context.Context, id *tenancy.Identity) (*Ticket, error) {
	now := l.now().UTC()
	lim := id.Limits
	t := &Ticket{l: l, tenant: id.TenantID, now: now, Headers: metadata.MD{}}

	if lim.RequestsPerMinute > 0 {
		t.bucket = l.bucketFor(id.KeyID, lim.RequestsPerMinute)
		ok, remaining, reset, retry := t.bucket.take(now)
		t.Headers.Set("x-ratelimit-limit", strconv.FormatInt(lim.RequestsPerMinute, 10))
		t.Headers.Set("x-ratelimit-remaining", strconv.FormatInt(remaining, 10))
		t.Headers.Set("x-ratelimit-reset", strconv.FormatInt(ceilSeconds(reset), 10))
		if !ok {
			t.bucket = nil
			return t, exhausted(t, fmt.Sprintf("Rate limit exceeded: %d requests per minute allowed for this API key", lim.RequestsPerMinute), retry)
		}
	}

	tokensMonth := l.counters.Value(monthKey(id.TenantID, "tok", now))
	t.Headers.Set("x-tokens-month", strconv.FormatInt(tokensMonth, 10))
	if lim.TokensPerMonth > 0 && tokensMonth >= lim.TokensPerMonth {
		t.refundBucket()
		return t, exhausted(t, fmt.Sprintf("Monthly token quota exceeded: %d tokens per month allowed, %d used", lim.TokensPerMonth, tokensMonth), untilNextMonth(now))
	}

	if lim.RequestsPerDay > 0 {
		t.admKey = dayKey(id.TenantID, "adm", now)
		ok, err := l.counters.Reserve(ctx, t.admKey, lim.RequestsPerDay)
		if err != nil {
			// NATS is away: fail open on what this replica counted.
			t.admKey = ""
			ok = l.counters.Value(dayKey(id.TenantID, "req", now)) < lim.RequestsPerDay
		}
		if !ok {
			t.refundBucket()
			t.admKey = ""
			return t, exhausted(t, fmt.Sprintf("Rate limit exceeded: %d requests per day allowed; resets at 00:00 UTC", lim.RequestsPerDay), untilMidnight(now))
		}
	}
	l.counters.Add(dayKey(id.TenantID, "req", now), 1)
	return t, nil
}

// Finish settles the call: a request refused as the caller's own error
// (bad input, not found, forbidden, ...) gives its reservation back, so
// rejected requests consume no quota; the tokens it used are debited.
func (t *Ticket) Finish(code codes.Code, tokens int64) {
	if t == nil {
		return
	}
	if callersFault(code) {
		t.refundBucket()
		if t.admKey != "" {
			t.l.counters.Unreserve(t.admKey, 1)
		}
		t.l.counters.Add(dayKey(t.tenant, "req", t.now), -1)
	}
	if tokens > 0 {
		t.l.counters.Add(monthKey(t.tenant, "tok", t.now), tokens)
		t.l.counters.Add(dayKey(t.tenant, "tok", t.now), tokens)
	}
}

func (t *Ticket) refundBucket() {
	if t.bucket != nil {
		t.bucket.refund()
		t.bucket = nil
	}
}

// callersFault lists the outcomes that do not consume quota.
func callersFault(c codes.Code) bool {
	switch c {
	case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.PermissionDenied,
		codes.FailedPrecondition, codes.Aborted, codes.OutOfRange, codes.Unauthenticated,
		codes.ResourceExhausted, codes.Unimplemented:
		return true
	}
	return false
}

// Usage is a tenant's counts for the current UTC day and month.
type Usage struct {
	RequestsToday, TokensToday, TokensMonth int64
	Period                                  string // YYYY-MM
}

// Usage reads a tenant's counters.
func (l *Limiter) Usage(tenantID string) Usage {
	now := l.now().UTC()
	return Usage{
		RequestsToday: l.counters.Value(dayKey(tenantID, "req", now)),
		TokensToday:   l.counters.Value(dayKey(tenantID, "tok", now)),
		TokensMonth:   l.counters.Value(monthKey(tenantID, "tok", now)),
		Period:        now.Format("2006-01"),
	}
}

func exhausted(t *Ticket, msg string, retry time.Duration) error {
	secs := max(ceilSeconds(retry), 1)
	t.Headers.Set("retry-after", strconv.FormatInt(secs, 10))
	st := status.New(codes.ResourceExhausted, msg)
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(time.Duration(secs) * time.Second)}); err == nil {
		st = d
	}
	return st.Err()
}

func ceilSeconds(d time.Duration) int64 { return int64(math.Ceil(d.Seconds())) }

func untilMidnight(now time.Time) time.Duration {
	y, m, d := now.Date()
	return time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC).Sub(now)
}

func untilNextMonth(now time.Time) time.Duration {
	y, m, _ := now.Date()
	return time.Date(y, m+1, 1, 0, 0, 0, 0, time.UTC).Sub(now)
}

func (l *Limiter) bucketFor(keyID string, rpm int64) *bucket {
	if b, ok := l.buckets.Load(keyID); ok {
		bk := b.(*bucket)
		bk.resize(rpm)
		return bk
	}
	b, _ := l.buckets.LoadOrStore(keyID, newBucket(rpm, l.now()))
	return b.(*bucket)
}

// bucket is a token bucket: capacity rpm, refilled at rpm per minute.
type bucket struct {
	mu       sync.Mutex
	capacity float64
	tokens   float64
	last     time.Time
}

func newBucket(rpm int64, now time.Time) *bucket {
	return &bucket{capacity: float64(rpm), tokens: float64(rpm), last: now}
}

func (b *bucket) rate() float64 { return b.capacity / 60 } // tokens per second

func (b *bucket) refill(now time.Time) {
	if el := now.Sub(b.last).Seconds(); el > 0 {
		b.tokens = math.Min(b.capacity, b.tokens+el*b.rate())
		b.last = now
	}
}

// take spends a token; it reports what is left, how long until the bucket
// is full again, and (when refused) how long until a token is available.
func (b *bucket) take(now time.Time) (ok bool, remaining int64, reset, retry time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(now)
	if b.tokens >= 1 {
		b.tokens--
		ok = true
	} else {
		retry = secondsDur((1 - b.tokens) / b.rate())
	}
	return ok, int64(b.tokens), secondsDur((b.capacity - b.tokens) / b.rate()), retry
}

func (b *bucket) refund() {
	b.mu.Lock()
	b.tokens = math.Min(b.capacity, b.tokens+1)
	b.mu.Unlock()
}

// resize follows a changed limit (a reloaded key file or tiers).
func (b *bucket) resize(rpm int64) {
	b.mu.Lock()
	if c := float64(rpm); c != b.capacity {
		b.tokens = math.Min(b.tokens, c)
		b.capacity = c
	}
	b.mu.Unlock()
}

func secondsDur(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
