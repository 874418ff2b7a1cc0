package chaos_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/billing/lifecycle/lifecycletest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// A Stripe webhook acknowledged (200) by replica A, which is then killed
// (-9) at once, still changes the tenant, once, through replica B: the
// event was in the JetStream stream before the 200, and B's applier takes
// it (at once, or after the consumer's ack wait when A's applier had
// fetched it). A redelivery of the same event afterwards changes nothing.
func TestWebhookAcknowledgedThenKilledIsApplied(t *testing.T) {
	t.Parallel()
	const secret = "whsec_chaos"
	nats := natstest.Start(t)
	env := map[string]string{
		"NATS_SERVERS":          nats.URL(),
		"STRIPE_WEBHOOK_SECRET": secret,
		"KGENTS_SIGNUP":         "open",
	}
	a, b := startReplica(t, env), startReplica(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 2*lifecycle.ApplyAckWait+60*time.Second)
	defer cancel()

	var su struct {
		Tenant struct {
			ID string `json:"id"`
		} `json:"tenant"`
		Secret string `json:"secret"`
	}
	if code, err := a.do(ctx, "POST", "/v1/signup", "", `{"email":"killed-webhook@example.com","name":"Killed webhook"}`, &su); err != nil || code != 200 {
		t.Fatalf("signup: %d %v", code, err)
	}
	body, _ := json.Marshal(map[string]any{"id": "evt_chaos_kill", "object": "event", "api_version": "2024-06-20",
		"created": time.Now().Unix(), "type": "checkout.session.completed",
		"data": map[string]any{"object": map[string]any{"id": "cs_chaos", "object": "checkout.session", "mode": "subscription",
			"client_reference_id": su.Tenant.ID, "customer": "cus_chaos", "subscription": "sub_chaos"}}})
	post := func(r *replica) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.URL+"/webhooks/stripe", bytes.NewReader(body))
		req.Header.Set("Stripe-Signature", lifecycletest.Sign(body, secret, time.Time{}))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("webhook: %v", err)
		}
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(a); code != http.StatusOK {
		t.Fatalf("webhook on A: %d", code)
	}
	a.kill()

	took := eventually(t, 2*lifecycle.ApplyAckWait+30*time.Second, "the customer recorded through B", func() error {
		var st struct {
			CustomerID string `json:"customer_id"`
		}
		code, err := b.do(ctx, "GET", "/v1/billing", su.Secret, "", &st)
		if err != nil || code != 200 || st.CustomerID != "cus_chaos" {
			return fmt.Errorf("GET /v1/billing on B: %d %+v: %w", code, st, err)
		}
		return nil
	})
	t.Logf("applied through B %v after the kill", took.Round(time.Millisecond))

	// Stripe retries (it never got a 200 it trusted, say): acknowledged, not applied again.
	if code := post(b); code != http.StatusOK {
		t.Fatalf("redelivery on B: %d", code)
	}
	checkouts := func() (int, error) {
		var audit struct {
			Entries []struct {
				Actor  string `json:"actor"`
				Action string `json:"action"`
			} `json:"entries"`
		}
		code, err := b.do(ctx, "GET", "/v1/admin/audit?tenant_id="+su.Tenant.ID+"&limit=100", "kg_dev_ops", "", &audit)
		if err != nil || code != 200 {
			return 0, fmt.Errorf("audit: %d: %w", code, err)
		}
		n := 0
		for _, e := range audit.Entries {
			if e.Action == "billing.checkout" && e.Actor == "stripe" {
				n++
			}
		}
		return n, nil
	}
	// Let B's applier take the redelivery (one event in flight at a time).
	eventually(t, 30*time.Second, "B's applier counts the redelivery", func() error {
		var h struct {
			Received  int64 `json:"received"`
			Duplicate int64 `json:"duplicate"`
			Applied   int64 `json:"applied"`
		}
		code, err := b.do(ctx, "GET", "/webhooks/stripe/health", "", "", &h)
		if err != nil || code != 200 || h.Received < 1 || h.Duplicate < 1 {
			return fmt.Errorf("health on B: %d %+v: %w", code, h, err)
		}
		return nil
	})
	if n, err := checkouts(); err != nil || n != 1 {
		t.Errorf("billing.checkout audit entries by stripe: %d %v, want exactly 1", n, err)
	}
}
