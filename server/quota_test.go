package server_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

func tiersFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tiers.json")
	if err := writeTestFile(p, body); err != nil {
		t.Fatal(err)
	}
	return p
}

type usage struct {
	TenantID      string `json:"tenant_id"`
	Tier          string `json:"tier"`
	Period        string `json:"period"`
	RequestsToday int    `json:"requests_today"`
	TokensToday   int    `json:"tokens_today"`
	TokensMonth   int    `json:"tokens_month"`
	Limits        struct {
		RequestsPerMinute int `json:"requests_per_minute"`
		RequestsPerDay    int `json:"requests_per_day"`
		TokensPerMonth    int `json:"tokens_per_month"`
	} `json:"limits"`
}

func TestFreeTierPerMinuteLimit(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false",
		"KGENTS_TIERS_FILE": tiersFile(t, `{"free":{"requests_per_minute":5,"requests_per_day":0}}`)})
	for i := 1; i <= 5; i++ {
		resp, b := in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"hello"}`)
		mustStatus(t, resp, b, http.StatusOK)
		if got := resp.Header.Get("X-RateLimit-Remaining"); got != strconv.Itoa(5-i) || resp.Header.Get("X-RateLimit-Limit") != "5" {
			t.Errorf("call %d: X-RateLimit-Remaining %q Limit %q", i, got, resp.Header.Get("X-RateLimit-Limit"))
		}
		if resp.Header.Get("X-RateLimit-Reset") == "" || resp.Header.Get("X-Tokens-Month") == "" {
			t.Errorf("call %d lacks rate-limit headers: %v", i, resp.Header)
		}
	}
	resp, b := in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"hello"}`)
	mustStatus(t, resp, b, http.StatusTooManyRequests)
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra < 1 || ra > 12 {
		t.Errorf("Retry-After %q, want 1..12 s", resp.Header.Get("Retry-After"))
	}
	if e := decodeErr(t, b); e.Code != "resource_exhausted" || !strings.Contains(e.Detail, "5 requests per minute") {
		t.Errorf("429 body %+v", e)
	}
	if resp.Header.Get("X-RateLimit-Remaining") != "0" {
		t.Errorf("429 carries the rate-limit headers too: %v", resp.Header)
	}
	// Another tenant is not affected.
	resp, b = in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"hello"}`)
	mustStatus(t, resp, b, http.StatusOK)
}

// TestFreeTierDailyLimit ports test_rate_limit_enforcement and
// test_rate_limit_per_user, and checks that refused calls consume nothing.
func TestFreeTierDailyLimit(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false",
		"KGENTS_TIERS_FILE": tiersFile(t, `{"free":{"requests_per_minute":0,"requests_per_day":10}}`)})
	for i := 1; i <= 10; i++ {
		// Bad requests in between are refused and refunded: they do not count.
		resp, b := in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"x","mode":"nope"}`)
		mustStatus(t, resp, b, http.StatusBadRequest)
		resp, b = in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"x","budget":"deep"}`)
		mustStatus(t, resp, b, http.StatusForbidden)
		resp, b = in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"hello","budget":"whisper"}`)
		mustStatus(t, resp, b, http.StatusOK)
	}
	resp, b := in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"hello","budget":"whisper"}`)
	mustStatus(t, resp, b, http.StatusTooManyRequests)
	if !strings.Contains(strings.ToLower(decodeErr(t, b).Detail), "rate limit") {
		t.Errorf("429 detail %s", b)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
	// The quota is per tenant: PRO still works.
	resp, b = in.Do(t, "POST", "/v1/soul/dialogue", bob, `{"prompt":"hello"}`)
	mustStatus(t, resp, b, http.StatusOK)
	// Usage reads still answer over the limit, and consume nothing.
	resp, b = in.Do(t, "GET", "/v1/usage", alice, "")
	mustStatus(t, resp, b, http.StatusOK)
	if u := decode[usage](t, b); u.RequestsToday != 10 {
		t.Errorf("alice's usage over the limit: %+v, want 10 requests today", u)
	}
	resp, b = in.Do(t, "GET", "/v1/usage", bob, "")
	mustStatus(t, resp, b, http.StatusOK)
	if u := decode[usage](t, b); u.RequestsToday != 2 || u.Tier != "pro" || u.Limits.RequestsPerDay != 1000 || u.TenantID != "00000000-0000-0000-0000-000000000001" {
		t.Errorf("bob's usage %+v", u)
	}
}

func TestTokenQuota(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false",
		"KGENTS_TIERS_FILE": tiersFile(t, `{"free":{"requests_per_minute":0,"requests_per_day":0,"tokens_per_month":60,"budgets":["dormant","whisper","dialogue"]}}`)})
	used := 0
	calls := 0
	for used < 60 {
		resp, b := in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"I keep rewriting my plans instead of doing the work","budget":"dialogue","mode":"challenge"}`)
		mustStatus(t, resp, b, http.StatusOK)
		if got, _ := strconv.Atoi(resp.Header.Get("X-Tokens-Month")); got != used {
			t.Fatalf("X-Tokens-Month %d before call %d, want %d", got, calls+1, used)
		}
		d := decode[dialogue](t, b)
		if d.TokensUsed == 0 {
			t.Fatalf("composed replies must cost tokens: %+v", d)
		}
		used += d.TokensUsed
		calls++
		if calls > 60 {
			t.Fatal("token quota never reached")
		}
	}
	resp, b := in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"one more","budget":"dialogue"}`)
	mustStatus(t, resp, b, http.StatusTooManyRequests)
	if !strings.Contains(decodeErr(t, b).Detail, "Monthly token quota exceeded: 60 tokens per month allowed") {
		t.Errorf("429 detail %s", b)
	}
	// The usage report agrees (read with carol: alice is out of quota).
	resp, b = in.Do(t, "GET", "/v1/usage", carol, "")
	mustStatus(t, resp, b, http.StatusOK)
	if u := decode[usage](t, b); u.Limits.TokensPerMonth != 0 || u.Period != time.Now().UTC().Format("2006-01") {
		t.Errorf("carol's usage %+v", u)
	}
}

// TestQuotaOverGRPC: the same limits and headers for native gRPC callers.
func TestQuotaOverGRPC(t *testing.T) {
	t.Parallel()
	in := servertest.Start(t, map[string]string{"NATS_ENABLED": "false",
		"KGENTS_TIERS_FILE": tiersFile(t, `{"free":{"requests_per_minute":2}}`)})
	client := soulv1.NewSoulServiceClient(in.Conn)
	ctx := servertest.Key(context.Background(), alice)
	for i := 0; i < 2; i++ {
		var h metadata.MD
		if _, err := client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hi"}, grpc.Header(&h)); err != nil {
			t.Fatal(err)
		}
		if len(h.Get("x-ratelimit-remaining")) == 0 {
			t.Errorf("no rate-limit header metadata: %v", h)
		}
	}
	_, err := client.Dialogue(ctx, &soulv1.DialogueRequest{Prompt: "hi"})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("third call: %v", err)
	}
	u, err := usagev1.NewUsageServiceClient(in.Conn).GetUsage(servertest.Key(context.Background(), bob), &usagev1.GetUsageRequest{})
	if err != nil || u.GetTier() != "pro" || u.GetLimits().GetRequestsPerMinute() != 600 {
		t.Errorf("GetUsage: %v %v", u, err)
	}
}

// TestTwoProcessesShareOneQuota: two kgentsd on one NATS admit exactly the
// tenant's daily limit between them.
func TestTwoProcessesShareOneQuota(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	tiers := tiersFile(t, `{"free":{"requests_per_minute":0,"requests_per_day":30}}`)
	env := map[string]string{"NATS_SERVERS": nats.URL(), "KGENTS_TIERS_FILE": tiers}
	a := servertest.Start(t, env)
	b := servertest.Start(t, env)
	ok, refused := 0, 0
	for i := 0; i < 60; i++ {
		in := a
		if i%2 == 1 {
			in = b
		}
		resp, body := in.Do(t, "POST", "/v1/soul/dialogue", alice, `{"prompt":"hello"}`)
		switch resp.StatusCode {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			refused++
		default:
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	}
	if ok != 30 || refused != 30 {
		t.Errorf("two replicas admitted %d and refused %d; the daily limit is 30", ok, refused)
	}
}
