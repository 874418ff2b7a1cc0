package quota

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/time/rate"
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
	keys     *lru.Cache[string, *counterKeys]
}

// keyCacheSize bounds the cached counter keys (one entry per active tenant).
const keyCacheSize = 10_000

// NewLimiter returns a limiter over counters.
func NewLimiter(c Counters, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	keys, _ := lru.New[string, *counterKeys](keyCacheSize) // a positive size: no error
	return &Limiter{counters: c, now: now, keys: keys}
}

// Counter keys: <tenant>.<what>.<d|m>.<period>, UTC calendar.
func dayKey(tenant, what string, t time.Time) string {
	return tenant + "." + what + ".d." + t.Format("20060102")
}

func monthKey(tenant, what string, t time.Time) string {
	return tenant + "." + what + ".m." + t.Format("200601")
}

// counterKeys are a tenant's counter keys for one UTC day: every call
// needs three or four of them, and building them (a time.Format and a
// concatenation each) was most of the limiter's allocations per call.
type counterKeys struct {
	day                    int32 // yyyymmdd
	admD, reqD, tokD, tokM string
}

// keysFor returns tenant's keys for t's day, from the cache when current.
func (l *Limiter) keysFor(tenant string, t time.Time) *counterKeys {
	y, m, d := t.Date()
	day := int32(y*10000 + int(m)*100 + d)
	if k, ok := l.keys.Get(tenant); ok && k.day == day {
		return k
	}
	k := &counterKeys{day: day, admD: dayKey(tenant, "adm", t), reqD: dayKey(tenant, "req", t),
		tokD: dayKey(tenant, "tok", t), tokM: monthKey(tenant, "tok", t)}
	l.keys.Add(tenant, k)
	return k
}

// Ticket is an admitted call: settle it with Finish.
type Ticket struct {
	l       *Limiter
	tenant  string
	now     time.Time
	bucket  *bucket
	admKey  string // the day's admissions, when reserved from a lease
	Headers metadata.MD
	// handedOver marks a ticket of AdmitRate that Admit took over: the
	// full ticket settles the call, Settle does nothing.
	handedOver bool
}

type ticketKey struct{}

// WithRateTicket returns ctx carrying t, a ticket of AdmitRate, for Admit
// to continue from.
func WithRateTicket(ctx context.Context, t *Ticket) context.Context {
	return context.WithValue(ctx, ticketKey{}, t)
}

// AdmitRate is the per-minute check alone: it spends a token of the key's
// bucket (refused with ResourceExhausted when it is empty) and returns the
// X-RateLimit-* and X-Tokens-Month headers. It is the whole check for a
// call that is not a new run — an idempotent replay — and the first half
// of Admit for one that is: pass the ticket on with WithRateTicket, and
// settle it with Settle once the call ends.
func (l *Limiter) AdmitRate(_ context.Context, id *tenancy.Identity) (*Ticket, error) {
	now := l.now().UTC()
	t := &Ticket{l: l, tenant: id.TenantID, now: now, Headers: metadata.MD{}}
	if err := t.admitRate(id); err != nil {
		return t, err
	}
	t.Headers.Set("x-tokens-month", strconv.FormatInt(l.counters.Value(l.keysFor(id.TenantID, now).tokM), 10))
	return t, nil
}

// Settle ends a call admitted by AdmitRate alone: one refused as the
// caller's own error gives its token back. A ticket Admit took over is
// settled by Admit's ticket (Finish) instead.
func (t *Ticket) Settle(code codes.Code) {
	if t == nil || t.handedOver {
		return
	}
	if callersFault(code) {
		t.refundBucket()
	}
}

func (t *Ticket) admitRate(id *tenancy.Identity) error {
	lim := id.Limits
	if lim.RequestsPerMinute <= 0 {
		return nil
	}
	t.bucket = t.l.bucketFor(id.KeyID, lim.RequestsPerMinute, t.now)
	ok, remaining, reset, retry := t.bucket.take(t.now)
	t.Headers.Set("x-ratelimit-limit", strconv.FormatInt(lim.RequestsPerMinute, 10))
	t.Headers.Set("x-ratelimit-remaining", strconv.FormatInt(remaining, 10))
	t.Headers.Set("x-ratelimit-reset", strconv.FormatInt(ceilSeconds(reset), 10))
	if !ok {
		t.bucket = nil
		return exhausted(t, fmt.Sprintf("Rate limit exceeded: %d requests per minute allowed for this API key", lim.RequestsPerMinute), retry)
	}
	return nil
}

// Admit checks the caller's limits and reserves one request. The headers
// (X-RateLimit-*, X-Tokens-Month) are returned also on refusal; the error is
// ResourceExhausted with a RetryInfo detail. When ctx carries a ticket of
// AdmitRate for the same caller (WithRateTicket), the per-minute check was
// made there: Admit continues from it, and its headers hold only what that
// ticket's did not (Retry-After on a refusal).
func (l *Limiter) Admit(ctx context.Context, id *tenancy.Identity) (*Ticket, error) {
	now := l.now().UTC()
	lim := id.Limits
	t := &Ticket{l: l, tenant: id.TenantID, now: now, Headers: metadata.MD{}}

	continued := false
	if rt, _ := ctx.Value(ticketKey{}).(*Ticket); rt != nil && rt.l == l && rt.tenant == id.TenantID && !rt.handedOver {
		rt.handedOver, continued = true, true
		t.now, t.bucket = rt.now, rt.bucket
		now = rt.now
	} else if err := t.admitRate(id); err != nil {
		return t, err
	}

	keys := l.keysFor(id.TenantID, now)
	tokensMonth := l.counters.Value(keys.tokM)
	if !continued { // AdmitRate already said it
		t.Headers.Set("x-tokens-month", strconv.FormatInt(tokensMonth, 10))
	}
	if lim.TokensPerMonth > 0 && tokensMonth >= lim.TokensPerMonth {
		t.refundBucket()
		return t, exhausted(t, fmt.Sprintf("Monthly token quota exceeded: %d tokens per month allowed, %d used", lim.TokensPerMonth, tokensMonth), untilNextMonth(now))
	}

	if lim.RequestsPerDay > 0 {
		t.admKey = keys.admD
		ok, err := l.counters.Reserve(ctx, t.admKey, lim.RequestsPerDay)
		if err != nil {
			// NATS is away: fail open on what this replica counted.
			t.admKey = ""
			ok = l.counters.Value(keys.reqD) < lim.RequestsPerDay
		}
		if !ok {
			t.refundBucket()
			t.admKey = ""
			return t, exhausted(t, fmt.Sprintf("Rate limit exceeded: %d requests per day allowed; resets at 00:00 UTC", lim.RequestsPerDay), untilMidnight(now))
		}
	}
	l.counters.Add(keys.reqD, 1)
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
		t.l.counters.Add(t.l.keysFor(t.tenant, t.now).reqD, -1)
	}
	if tokens > 0 {
		keys := t.l.keysFor(t.tenant, t.now)
		t.l.counters.Add(keys.tokM, tokens)
		t.l.counters.Add(keys.tokD, tokens)
	}
}

func (t *Ticket) refundBucket() {
	if t.bucket != nil {
		t.bucket.refund(t.l.now())
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

func (l *Limiter) bucketFor(keyID string, rpm int64, now time.Time) *bucket {
	if b, ok := l.buckets.Load(keyID); ok {
		bk := b.(*bucket)
		bk.resize(rpm, now)
		return bk
	}
	b, _ := l.buckets.LoadOrStore(keyID, newBucket(rpm))
	return b.(*bucket)
}

// bucket is a key's requests-per-minute token bucket: capacity rpm,
// refilled at rpm per minute, on golang.org/x/time/rate. Every call passes
// the limiter's clock, so tests control time. mu makes a take and the
// headers it reports one step (rate.Limiter locks each call on its own),
// and keeps the times it is given from going backwards: rate.Limiter
// accepts an earlier time and would refill the interval twice.
type bucket struct {
	mu   sync.Mutex
	lim  *rate.Limiter
	rpm  int64
	last time.Time
}

func perMinute(rpm int64) rate.Limit { return rate.Limit(float64(rpm) / 60) }

// newBucket returns a full bucket.
func newBucket(rpm int64) *bucket {
	return &bucket{lim: rate.NewLimiter(perMinute(rpm), int(rpm)), rpm: rpm}
}

// at returns now, or the latest time the bucket has seen if that is later.
// b.mu held.
func (b *bucket) at(now time.Time) time.Time {
	if now.Before(b.last) {
		return b.last
	}
	b.last = now
	return now
}

// take spends a token; it reports what is left, how long until the bucket
// is full again, and (when refused) how long until a token is available.
// The durations are computed from the integer limit (60 s/rpm a token), not
// from the float rate, so that 5 per minute says exactly 12 s.
func (b *bucket) take(now time.Time) (ok bool, remaining int64, reset, retry time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now = b.at(now)
	ok = b.lim.AllowN(now, 1)
	tokens := b.lim.TokensAt(now)
	if !ok {
		retry = tokensDur(1-tokens, b.rpm)
	}
	return ok, int64(tokens), tokensDur(float64(b.rpm)-tokens, b.rpm), retry
}

// refund gives a token back. x/time/rate has no method for it; a negative
// n does it (it adds n tokens, and the bucket is capped at its burst on the
// next read), which golang/go#54082 asks to document as the way to credit
// tokens back. TestRejectedCallsConsumeNothing and TestRefundNeverOverfills
// pin the behaviour.
func (b *bucket) refund(now time.Time) {
	b.mu.Lock()
	b.lim.AllowN(b.at(now), -1)
	b.mu.Unlock()
}

// resize follows a changed limit (a reloaded key file or tiers): tokens
// refill at the old rate up to now, then the new rate and capacity apply;
// tokens above a smaller capacity are dropped.
func (b *bucket) resize(rpm int64, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if rpm == b.rpm {
		return
	}
	now = b.at(now)
	b.rpm = rpm
	b.lim.SetLimitAt(now, perMinute(rpm))
	b.lim.SetBurstAt(now, int(rpm))
}

// tokensDur is how long rpm per minute take to refill n tokens.
func tokensDur(n float64, rpm int64) time.Duration {
	return time.Duration(n * float64(time.Minute) / float64(rpm))
}
