package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/kgents/kgents-go/billing/lifecycle/lifecycletest"
	"github.com/kgents/kgents-go/server/servertest"
)

const testWebhookSecret = "whsec_server_test"

func postJSON(t *testing.T, url, key string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func stripeEvent(id, typ string, created int64, object map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{"id": id, "object": "event", "api_version": "2024-06-20", "created": created, "type": typ,
		"data": map[string]any{"object": object}})
	return b
}

func postWebhook(t *testing.T, base string, body []byte, sig string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/stripe", bytes.NewReader(body))
	if sig != "" {
		req.Header.Set("Stripe-Signature", sig)
	}
	return do(t, req)
}

// TestStripeWebhooksMoveTheTenant runs kgentsd against stripe-mock: signed
// webhooks on POST /webhooks/stripe (no API key) move a signed-up tenant to
// PRO, forged ones are refused, and the health views count them.
func TestStripeWebhooksMoveTheTenant(t *testing.T) {
	mock := lifecycletest.StartMock(t)
	inst := servertest.Start(t, map[string]string{
		"STRIPE_API_KEY": "sk_test_server", "STRIPE_API_BASE": mock, "STRIPE_WEBHOOK_SECRET": testWebhookSecret,
		"STRIPE_PRICE_PRO_MONTHLY": "price_pro_month", "KGENTS_SIGNUP": "open",
	})
	code, su := postJSON(t, inst.URL+"/v1/signup", "", map[string]any{"email": "payer@example.com", "name": "Payer"})
	if code != 200 {
		t.Fatalf("signup: %d %v", code, su)
	}
	tenantID := su["tenant"].(map[string]any)["id"].(string)
	key := su["secret"].(string)

	body := stripeEvent("evt_srv_forged", "invoice.paid", time.Now().Unix(), map[string]any{"id": "in_1", "object": "invoice"})
	if code, _ := postWebhook(t, inst.URL, body, lifecycletest.Sign(body, "whsec_wrong", time.Time{})); code != 400 {
		t.Errorf("forged: %d", code)
	}
	if code, _ := postWebhook(t, inst.URL, body, ""); code != 400 {
		t.Errorf("unsigned: %d", code)
	}
	now := time.Now().Unix()
	for _, ev := range [][]byte{
		stripeEvent("evt_srv_co", "checkout.session.completed", now, map[string]any{"id": "cs_1", "object": "checkout.session", "mode": "subscription",
			"client_reference_id": tenantID, "customer": "cus_srv", "subscription": "sub_srv", "amount_total": 1000, "currency": "eur"}),
		stripeEvent("evt_srv_sc", "customer.subscription.created", now+1, map[string]any{"id": "sub_srv", "object": "subscription", "customer": "cus_srv",
			"status": "active", "metadata": map[string]any{"tenant_id": tenantID},
			"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_1", "object": "subscription_item",
				"price": map[string]any{"id": "price_pro_month", "object": "price", "recurring": map[string]any{"interval": "month"}}}}}}),
	} {
		code, out := postWebhook(t, inst.URL, ev, lifecycletest.Sign(ev, testWebhookSecret, time.Time{}))
		if code != 200 || out["status"] != "received" {
			t.Fatalf("webhook: %d %v", code, out)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, inst.URL+"/v1/tenant", nil)
		req.Header.Set("X-API-Key", key)
		code, tn := do(t, req)
		if code == 200 && tn["tier"] == "pro" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tenant not PRO within 2 s: %d %v", code, tn)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The applier changes the tenant before it counts the event: wait for
	// the count.
	var h map[string]any
	for deadline := time.Now().Add(5 * time.Second); ; {
		req, _ := http.NewRequest(http.MethodGet, inst.URL+"/webhooks/stripe/health", nil)
		code, h = do(t, req)
		if code == 200 && h["applied"] == float64(2) {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != 200 || h["received"] != float64(2) || h["applied"] != float64(2) || h["rejected"] != float64(2) {
		t.Errorf("webhook health: %d %v", code, h)
	}
	req, _ := http.NewRequest(http.MethodGet, inst.URL+"/health/saas", nil)
	code, saas := do(t, req)
	st, _ := saas["stripe"].(map[string]any)
	if code != 200 || st["status"] != "ok" || st["configured"] != true || st["last_error"] != nil {
		t.Errorf("health/saas stripe: %v", fmt.Sprint(saas["stripe"]))
	}
}
