package quota_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/interceptors/auth"
	"github.com/kgents/kgents-go/interceptors/interceptortest"
	"github.com/kgents/kgents-go/interceptors/metering"
	quotaic "github.com/kgents/kgents-go/interceptors/quota"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/tenancy"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// keys authenticates one key per test with the limits it gives.
type keys map[string]*tenancy.Identity

func (k keys) Authenticate(raw string) (*tenancy.Identity, error) {
	if id, ok := k[raw]; ok {
		return id, nil
	}
	return nil, errors.New("invalid API key")
}

var rules = auth.Rules{Methods: map[string]auth.Rule{
	interceptortest.Dialogue:       {Scope: tenancy.ScopeRead},
	interceptortest.StreamDialogue: {Scope: tenancy.ScopeRead},
	interceptortest.Governance:     {Scope: tenancy.ScopeRead},
}}

// withRecorder gives each call a metering recorder, as the metering
// interceptor does, for the tokens the handler reports.
func withRecorder() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return h(metering.WithRecorder(ctx, &metering.Recorder{}), req)
		}, func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			return h(srv, interceptors.WithContext(ss, metering.WithRecorder(ss.Context(), &metering.Recorder{})))
		}
}

// fixture is the service behind auth, a recorder, the rate-limit stage for
// rateLimited methods, and the quota interceptor with Governance always
// answered. The handlers answer with the code the prompt names and report
// 10 tokens.
type fixture struct {
	client  soulv1.SoulServiceClient
	limiter *quota.Limiter
	handled atomic.Int32
}

func newFixture(t *testing.T, lim tenancy.Limits, rateLimited ...string) *fixture {
	t.Helper()
	f := &fixture{}
	c := &clock{t: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	f.limiter = quota.NewLimiter(quota.NewMemory(), c.now)
	answer := func(ctx context.Context, prompt string) error {
		f.handled.Add(1)
		metering.RecordTokens(ctx, metering.TokenUsage{TokensIn: 4, TokensOut: 6})
		if prompt == "bad" {
			return status.Error(codes.InvalidArgument, "prompt: bad")
		}
		return nil
	}
	soul := &interceptortest.Soul{
		OnDialogue: func(ctx context.Context, req *soulv1.DialogueRequest) (*soulv1.DialogueResponse, error) {
			if err := answer(ctx, req.GetPrompt()); err != nil {
				return nil, err
			}
			return &soulv1.DialogueResponse{Response: "ok"}, nil
		},
		OnStream: func(req *soulv1.StreamDialogueRequest, ss grpc.ServerStreamingServer[soulv1.StreamDialogueResponse]) error {
			if err := answer(ss.Context(), req.GetPrompt()); err != nil {
				return err
			}
			return ss.Send(&soulv1.StreamDialogueResponse{Id: "1"})
		},
		OnGovernance: func(ctx context.Context, _ *soulv1.GovernanceRequest) (*soulv1.GovernanceResponse, error) {
			return &soulv1.GovernanceResponse{}, answer(ctx, "")
		},
	}
	var chain interceptortest.Chain
	chain.Add(auth.New(keys{"kg_t": {TenantID: "t1", KeyID: "k1", Scopes: tenancy.ScopeRead, Limits: lim}}, rules))
	u, s := withRecorder()
	chain.Unary, chain.Stream = append(chain.Unary, u), append(chain.Stream, s)
	chain.Add(quotaic.NewRateLimit(f.limiter, rateLimited))
	chain.Add(quotaic.New(f.limiter).AlwaysAnswer(interceptortest.Governance))
	f.client = soulv1.NewSoulServiceClient(interceptortest.Serve(t, soul, chain))
	return f
}

// result is what a caller saw of one call.
type result struct {
	code   codes.Code
	header metadata.MD
	retry  time.Duration // RetryInfo detail
}

func (f *fixture) call(t *testing.T, method, prompt string) result {
	t.Helper()
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", "kg_t")
	var r result
	var err error
	switch method {
	case interceptortest.Dialogue:
		_, err = f.client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: prompt}, grpc.Header(&r.header))
	case interceptortest.Governance:
		_, err = f.client.Governance(ctx, &soulv1.GovernanceRequest{Action: prompt}, grpc.Header(&r.header))
	case interceptortest.StreamDialogue:
		var st grpc.ServerStreamingClient[soulv1.StreamDialogueResponse]
		st, err = f.client.StreamDialogue(ctx, &soulv1.StreamDialogueRequest{Prompt: prompt})
		for err == nil {
			_, err = st.Recv()
		}
		if errors.Is(err, io.EOF) {
			err = nil
		}
		if st != nil {
			r.header, _ = st.Header()
		}
	}
	st := status.Convert(err)
	r.code = st.Code()
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			r.retry = ri.GetRetryDelay().AsDuration()
		}
	}
	return r
}

func one(t *testing.T, md metadata.MD, key string) string {
	t.Helper()
	v := md.Get(key)
	if len(v) > 1 {
		t.Errorf("%s sent %d times: %v", key, len(v), v)
	}
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// TestPerMinuteLimit: within the bucket every call carries X-RateLimit-*
// and X-Tokens-Month; the call after it is refused with ResourceExhausted,
// a RetryInfo detail and Retry-After, without reaching the handler — the
// same for unary and streaming calls, and for methods behind the separate
// rate-limit stage (charged once, headers sent once).
func TestPerMinuteLimit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		method      string
		rateLimited bool
	}{
		{"unary", interceptortest.Dialogue, false},
		{"stream", interceptortest.StreamDialogue, false},
		{"unary behind the rate-limit stage", interceptortest.Dialogue, true},
		{"stream behind the rate-limit stage", interceptortest.StreamDialogue, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var staged []string
			if tc.rateLimited {
				staged = []string{tc.method}
			}
			f := newFixture(t, tenancy.Limits{RequestsPerMinute: 3}, staged...)
			for i := range 3 {
				r := f.call(t, tc.method, "hi")
				if r.code != codes.OK {
					t.Fatalf("call %d: %s", i+1, r.code)
				}
				if one(t, r.header, "x-ratelimit-limit") != "3" || one(t, r.header, "x-ratelimit-remaining") != string(rune('2'-i)) ||
					one(t, r.header, "x-ratelimit-reset") != []string{"20", "40", "60"}[i] || one(t, r.header, "x-tokens-month") != []string{"0", "10", "20"}[i] {
					t.Errorf("call %d headers %v", i+1, r.header)
				}
				if len(r.header.Get("retry-after")) != 0 {
					t.Errorf("call %d: Retry-After on a success", i+1)
				}
			}
			r := f.call(t, tc.method, "hi")
			if r.code != codes.ResourceExhausted || r.retry != 20*time.Second {
				t.Fatalf("4th call: %s, retry %s; want ResourceExhausted, 20s", r.code, r.retry)
			}
			if one(t, r.header, "retry-after") != "20" || one(t, r.header, "x-ratelimit-remaining") != "0" || one(t, r.header, "x-ratelimit-limit") != "3" {
				t.Errorf("refusal headers %v", r.header)
			}
			if got := f.handled.Load(); got != 3 {
				t.Errorf("handler ran %d times, want 3", got)
			}
			if u := f.limiter.Usage("t1"); u.RequestsToday != 3 || u.TokensMonth != 30 {
				t.Errorf("usage %+v, want 3 requests and 30 tokens", u)
			}
		})
	}
}

// TestCallersErrorsConsumeNothing: a call that ends in the caller's fault
// gives its token and its day's request back; its tokens are still debited.
func TestCallersErrorsConsumeNothing(t *testing.T) {
	t.Parallel()
	for _, method := range []string{interceptortest.Dialogue, interceptortest.StreamDialogue} {
		f := newFixture(t, tenancy.Limits{RequestsPerMinute: 2, RequestsPerDay: 2})
		for i := range 5 {
			if r := f.call(t, method, "bad"); r.code != codes.InvalidArgument || one(t, r.header, "x-ratelimit-remaining") != "1" {
				t.Fatalf("%s: bad call %d: %s %v", method, i+1, r.code, r.header)
			}
		}
		for i := range 2 {
			if r := f.call(t, method, "hi"); r.code != codes.OK {
				t.Fatalf("%s: good call %d after refunded ones: %s", method, i+1, r.code)
			}
		}
		if u := f.limiter.Usage("t1"); u.RequestsToday != 2 || u.TokensMonth != 70 {
			t.Errorf("%s: usage %+v, want 2 requests, 70 tokens", method, u)
		}
	}
}

// TestDailyLimit: the day's requests are refused with Retry-After until
// 00:00 UTC (the fixture's clock says 10:00).
func TestDailyLimit(t *testing.T) {
	t.Parallel()
	f := newFixture(t, tenancy.Limits{RequestsPerDay: 1})
	if r := f.call(t, interceptortest.Dialogue, "hi"); r.code != codes.OK || len(r.header.Get("x-ratelimit-limit")) != 0 {
		t.Fatalf("first call: %s %v (no per-minute limit: no X-RateLimit-*)", r.code, r.header)
	}
	r := f.call(t, interceptortest.StreamDialogue, "hi")
	if r.code != codes.ResourceExhausted || r.retry != 14*time.Hour || one(t, r.header, "retry-after") != "50400" {
		t.Errorf("second call: %s retry %s headers %v", r.code, r.retry, r.header)
	}
}

// TestAlwaysAnsweredMethods: over the limits they still run, with the
// refusal's headers but no Retry-After, and consume nothing.
func TestAlwaysAnsweredMethods(t *testing.T) {
	t.Parallel()
	f := newFixture(t, tenancy.Limits{RequestsPerMinute: 1, TokensPerMonth: 5})
	if r := f.call(t, interceptortest.Dialogue, "hi"); r.code != codes.OK {
		t.Fatal(r.code)
	}
	if r := f.call(t, interceptortest.Dialogue, "hi"); r.code != codes.ResourceExhausted {
		t.Fatalf("over the limits: %s", r.code)
	}
	for i := range 3 {
		r := f.call(t, interceptortest.Governance, "ls")
		// The headers of the per-minute refusal, which has no X-Tokens-Month.
		if r.code != codes.OK || len(r.header.Get("retry-after")) != 0 || one(t, r.header, "x-ratelimit-remaining") != "0" || len(r.header.Get("x-tokens-month")) != 0 {
			t.Errorf("always-answered call %d: %s %v", i+1, r.code, r.header)
		}
	}
	if u := f.limiter.Usage("t1"); u.RequestsToday != 1 || u.TokensMonth != 10 {
		t.Errorf("usage %+v: always-answered calls over the limits consumed something", u)
	}
}

// TestCallsWithoutIdentityPassThrough: a call no one authenticated (a
// public service) is not the quota's: no headers, no counting.
func TestCallsWithoutIdentityPassThrough(t *testing.T) {
	t.Parallel()
	l := quota.NewLimiter(quota.NewMemory(), nil)
	var chain interceptortest.Chain
	chain.Add(quotaic.NewRateLimit(l, []string{interceptortest.Dialogue})).Add(quotaic.New(l))
	client := soulv1.NewSoulServiceClient(interceptortest.Serve(t, &interceptortest.Soul{}, chain))
	var header metadata.MD
	if _, err := client.Dialogue(context.Background(), &soulv1.DialogueRequest{}, grpc.Header(&header)); err != nil {
		t.Fatal(err)
	}
	for k := range header {
		if k == "x-ratelimit-limit" || k == "x-tokens-month" {
			t.Errorf("header %s on a call without identity", k)
		}
	}
}
