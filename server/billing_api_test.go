package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kgents/kgents-go/billing/lifecycle/lifecycletest"
	billingv1 "github.com/kgents/kgents-go/gen/kgents/billing/v1"
	tenantsv1 "github.com/kgents/kgents-go/gen/kgents/tenants/v1"
	"github.com/kgents/kgents-go/server/servertest"
)

// startBilling runs kgentsd with billing at stripe-mock (mock "" = billing off).
func startBilling(t *testing.T, mock string) *servertest.Instance {
	t.Helper()
	env := map[string]string{"KGENTS_SIGNUP": "open"}
	if mock != "" {
		env["STRIPE_API_KEY"], env["STRIPE_API_BASE"], env["STRIPE_WEBHOOK_SECRET"] = "sk_test_billingapi", mock, testWebhookSecret
		env["STRIPE_PRICE_PRO_MONTHLY"], env["STRIPE_PRICE_PRO_YEARLY"] = "price_pro_month", "price_pro_year"
		env["STRIPE_PRICE_ENTERPRISE_MONTHLY"] = "price_ent_month"
	}
	return servertest.Start(t, env)
}

// signUp makes a tenant and returns its id and admin key's secret.
func signUp(t *testing.T, in *servertest.Instance, email string) (string, string) {
	t.Helper()
	code, su := postJSON(t, in.URL+"/v1/signup", "", map[string]any{"email": email, "name": "Billing " + email})
	if code != http.StatusOK {
		t.Fatalf("signup: %d %v", code, su)
	}
	return su["tenant"].(map[string]any)["id"].(string), su["secret"].(string)
}

func expect(t *testing.T, what string, resp *http.Response, b []byte, code int) map[string]any {
	t.Helper()
	if resp.StatusCode != code {
		t.Fatalf("%s: %d, want %d: %s", what, resp.StatusCode, code, b)
	}
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: %v: %s", what, err, b)
	}
	return out
}

// TestBillingAPI: a tenant admin gets a Checkout URL, a Portal URL once a
// checkout.session.completed webhook recorded its customer, and its state
// from GET /v1/billing; scopes, validation and the portal without a
// customer are refused; the gRPC twin answers the same.
func TestBillingAPI(t *testing.T) {
	// Not parallel: two stripe-mocks at once collide on its HTTPS port.
	in := startBilling(t, lifecycletest.StartMock(t))
	tenantID, admin := signUp(t, in, "billing-api@example.com")

	resp, b := in.Do(t, "GET", "/v1/billing", admin, "")
	st := expect(t, "GET /v1/billing before", resp, b, http.StatusOK)
	if st["tier"] != "free" || st["status"] != "active" || st["customer_id"] != "" || st["subscription"] != nil || st["grace_until"] != nil || st["configured"] != true {
		t.Errorf("initial state: %s", b)
	}
	resp, b = in.Do(t, "POST", "/v1/billing/portal", admin, `{}`)
	if e := expect(t, "portal without a customer", resp, b, http.StatusConflict); !strings.Contains(e["detail"].(string), "checkout") {
		t.Errorf("portal without a customer: %s", b)
	}

	for _, body := range []string{`{"tier":"pro"}`, `{"tier":"pro","interval":"year","success_url":"https://app.example/ok","cancel_url":"https://app.example/no"}`, `{"tier":"enterprise"}`} {
		resp, b = in.Do(t, "POST", "/v1/billing/checkout", admin, body)
		co := expect(t, "checkout "+body, resp, b, http.StatusOK)
		if u, _ := co["url"].(string); !strings.HasPrefix(u, "http") || co["session_id"] == "" {
			t.Errorf("checkout %s: %s", body, b)
		}
	}
	// A repeat with the same Idempotency-Key is the stored answer.
	resp, b = in.Do(t, "POST", "/v1/billing/checkout", admin, `{"tier":"pro"}`, "Idempotency-Key", "co-1")
	first := expect(t, "checkout with a key", resp, b, http.StatusOK)
	resp, b = in.Do(t, "POST", "/v1/billing/checkout", admin, `{"tier":"pro"}`, "Idempotency-Key", "co-1")
	if again := expect(t, "checkout replayed", resp, b, http.StatusOK); resp.Header.Get("Idempotent-Replayed") != "true" || again["url"] != first["url"] {
		t.Errorf("replay: %v %s", resp.Header, b)
	}

	// Each started checkout is in the audit log, by the admin's key (the
	// replay started none: four, not five).
	resp, b = in.Do(t, "GET", "/v1/admin/audit?tenant_id="+tenantID+"&limit=100", "kg_dev_ops", "")
	audit := expect(t, "audit", resp, b, http.StatusOK)
	checkouts := 0
	entries, _ := audit["entries"].([]any)
	for _, e := range entries {
		if m, _ := e.(map[string]any); m["action"] == "billing.checkout" && strings.HasPrefix(fmt.Sprint(m["actor"]), "key_") {
			checkouts++
		}
	}
	if checkouts != 4 {
		t.Errorf("%d billing.checkout entries by the admin's key, want 4: %s", checkouts, b)
	}

	// Refusals.
	resp, b = in.Do(t, "POST", "/v1/keys", admin, `{"name":"reader","scopes":["read","write"]}`)
	reader := expect(t, "create a non-admin key", resp, b, http.StatusOK)["secret"].(string)
	for _, tc := range []struct {
		key, method, path, body string
		code                    int
	}{
		{reader, "POST", "/v1/billing/checkout", `{"tier":"pro"}`, http.StatusForbidden},
		{reader, "POST", "/v1/billing/portal", `{}`, http.StatusForbidden},
		{"", "POST", "/v1/billing/checkout", `{"tier":"pro"}`, http.StatusUnauthorized},
		{admin, "POST", "/v1/billing/checkout", `{}`, http.StatusBadRequest},
		{admin, "POST", "/v1/billing/checkout", `{"tier":"free"}`, http.StatusBadRequest},
		{admin, "POST", "/v1/billing/checkout", `{"tier":"gold"}`, http.StatusBadRequest},
		{admin, "POST", "/v1/billing/checkout", `{"tier":"pro","interval":"week"}`, http.StatusBadRequest},
		{admin, "POST", "/v1/billing/checkout", `{"tier":"pro","success_url":"not a url"}`, http.StatusBadRequest},
		{admin, "POST", "/v1/billing/checkout", `{"tier":"pro","cancel_url":"https://x.example/` + strings.Repeat("a", 2048) + `"}`, http.StatusBadRequest},
		// No STRIPE_PRICE_ENTERPRISE_YEARLY here.
		{admin, "POST", "/v1/billing/checkout", `{"tier":"enterprise","interval":"year"}`, http.StatusBadRequest},
		{admin, "POST", "/v1/billing/portal", `{"return_url":"relative/path"}`, http.StatusBadRequest},
		// Dev tenants are read-only: they cannot be billed.
		{ops, "POST", "/v1/billing/checkout", `{"tier":"pro"}`, http.StatusConflict},
	} {
		resp, b := in.Do(t, tc.method, tc.path, tc.key, tc.body)
		if resp.StatusCode != tc.code {
			t.Errorf("%s %s %s: %d, want %d: %s", tc.method, tc.path, tc.body, resp.StatusCode, tc.code, b)
		}
	}
	// A reader reads the billing state.
	resp, b = in.Do(t, "GET", "/v1/billing", reader, "")
	expect(t, "GET /v1/billing as reader", resp, b, http.StatusOK)

	// Stripe reports the completed checkout and the subscription.
	now := time.Now().Unix()
	for _, ev := range [][]byte{
		stripeEvent("evt_api_co", "checkout.session.completed", now, map[string]any{"id": "cs_api", "object": "checkout.session", "mode": "subscription",
			"client_reference_id": tenantID, "customer": "cus_api", "subscription": "sub_api"}),
		stripeEvent("evt_api_sc", "customer.subscription.created", now+1, map[string]any{"id": "sub_api", "object": "subscription", "customer": "cus_api",
			"status": "active", "metadata": map[string]any{"tenant_id": tenantID}, "current_period_end": now + 30*86400,
			"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_api", "object": "subscription_item", "current_period_end": now + 30*86400,
				"price": map[string]any{"id": "price_pro_month", "object": "price", "recurring": map[string]any{"interval": "month"}}}}}}),
	} {
		if code, out := postWebhook(t, in.URL, ev, lifecycletest.Sign(ev, testWebhookSecret, time.Time{})); code != http.StatusOK {
			t.Fatalf("webhook: %d %v", code, out)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, b = in.Do(t, "GET", "/v1/billing", admin, "")
		st = expect(t, "GET /v1/billing", resp, b, http.StatusOK)
		if sub, _ := st["subscription"].(map[string]any); st["tier"] == "pro" && sub != nil && sub["status"] == "active" {
			if st["customer_id"] != "cus_api" || sub["id"] != "sub_api" || sub["price_id"] != "price_pro_month" || sub["interval"] != "month" ||
				sub["cancel_at_period_end"] != false || st["status"] != "active" {
				t.Errorf("state after the webhooks: %s", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhooks not applied: %s", b)
		}
		time.Sleep(25 * time.Millisecond)
	}
	resp, b = in.Do(t, "POST", "/v1/billing/portal", admin, `{"return_url":"https://app.example/settings"}`)
	if p := expect(t, "portal", resp, b, http.StatusOK); !strings.HasPrefix(p["url"].(string), "http") {
		t.Errorf("portal: %s", b)
	}

	// The gRPC twins, through the same chain.
	ctx, cancel := context.WithTimeout(servertest.Key(context.Background(), admin), 10*time.Second)
	defer cancel()
	c := billingv1.NewBillingServiceClient(in.Conn)
	g, err := c.GetBilling(ctx, &billingv1.GetBillingRequest{})
	if err != nil || g.GetTier() != tenantsv1.Tier_TIER_PRO || g.GetSubscription().GetId() != "sub_api" {
		t.Errorf("gRPC GetBilling: %v %v", g, err)
	}
	if co, err := c.CreateCheckoutSession(ctx, &billingv1.CreateCheckoutSessionRequest{Tier: tenantsv1.Tier_TIER_ENTERPRISE}); err != nil || co.GetUrl() == "" {
		t.Errorf("gRPC checkout: %v %v", co, err)
	}
}

// TestBillingOff: without STRIPE_API_KEY checkout and portal are 501 naming
// the variable; the state is still readable.
func TestBillingOff(t *testing.T) {
	t.Parallel()
	in := startBilling(t, "")
	_, admin := signUp(t, in, "billing-off@example.com")
	for _, tc := range []struct{ path, body string }{{"/v1/billing/checkout", `{"tier":"pro"}`}, {"/v1/billing/portal", `{}`}} {
		resp, b := in.Do(t, "POST", tc.path, admin, tc.body)
		e := expect(t, tc.path, resp, b, http.StatusNotImplemented)
		if !strings.Contains(e["detail"].(string), "STRIPE_API_KEY") || e["code"] != "unimplemented" {
			t.Errorf("%s: %s", tc.path, b)
		}
	}
	resp, b := in.Do(t, "GET", "/v1/billing", admin, "")
	if st := expect(t, "GET /v1/billing", resp, b, http.StatusOK); st["tier"] != "free" || st["status"] != "active" || st["configured"] != false {
		t.Errorf("state with billing off (configured false): %s", b)
	}
}

// TestBillingWhileSuspended: a suspended tenant is refused (402) elsewhere
// but can still check out, open the portal and read its billing state.
func TestBillingWhileSuspended(t *testing.T) {
	// Not parallel: two stripe-mocks at once collide on its HTTPS port.
	in := startBilling(t, lifecycletest.StartMock(t))
	tenantID, admin := signUp(t, in, "billing-late@example.com")
	ev := stripeEvent("evt_late_co", "checkout.session.completed", time.Now().Unix(), map[string]any{"id": "cs_late", "object": "checkout.session",
		"mode": "subscription", "client_reference_id": tenantID, "customer": "cus_late", "subscription": "sub_late"})
	if code, out := postWebhook(t, in.URL, ev, lifecycletest.Sign(ev, testWebhookSecret, time.Time{})); code != http.StatusOK {
		t.Fatalf("webhook: %d %v", code, out)
	}
	resp, b := in.Do(t, "PATCH", "/v1/admin/tenants/"+tenantID, ops, `{"status":"suspended"}`)
	expect(t, "suspend", resp, b, http.StatusOK)
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, b = in.Do(t, "GET", "/v1/billing", admin, "")
		st := expect(t, "GET /v1/billing", resp, b, http.StatusOK)
		if st["status"] == "suspended" && st["customer_id"] == "cus_late" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not suspended with its customer: %s", b)
		}
		time.Sleep(25 * time.Millisecond)
	}
	resp, b = in.Do(t, "GET", "/v1/kgent/sessions", admin, "")
	if e := expect(t, "sessions while suspended", resp, b, http.StatusPaymentRequired); e["code"] != "tenant_suspended" {
		t.Errorf("suspended elsewhere: %s", b)
	}
	resp, b = in.Do(t, "POST", "/v1/billing/checkout", admin, `{"tier":"pro"}`)
	expect(t, "checkout while suspended", resp, b, http.StatusOK)
	resp, b = in.Do(t, "POST", "/v1/billing/portal", admin, `{}`)
	expect(t, "portal while suspended", resp, b, http.StatusOK)
}

// TestCheckoutAsStripeReceivesIt: through kgentsd, what Stripe receives for
// a tenant's checkout (seen by a recording proxy in front of stripe-mock)
// carries the tenant and the tier's price; a request stripe-mock's own
// validator refuses (corrupted in flight: no input of ours reaches a
// parameter it checks) is a 400 that says nothing of Stripe's error.
func TestCheckoutAsStripeReceivesIt(t *testing.T) {
	t.Parallel()
	rec := lifecycletest.StartRecorder(t, lifecycletest.StartMock(t))
	in := startBilling(t, rec.URL)
	email := fmt.Sprintf("stripe-sees-%d@example.com", time.Now().UnixNano())
	tenantID, admin := signUp(t, in, email)

	resp, b := in.Do(t, "POST", "/v1/billing/checkout", admin, `{"tier":"pro","interval":"year"}`)
	expect(t, "checkout", resp, b, http.StatusOK)
	r, ok := rec.Last("/v1/checkout/sessions")
	if !ok {
		t.Fatal("no checkout reached Stripe")
	}
	for k, v := range map[string]string{
		"mode": "subscription", "line_items[0][price]": "price_pro_year", "line_items[0][quantity]": "1",
		"client_reference_id": tenantID, "subscription_data[metadata][tenant_id]": tenantID, "customer_email": email,
	} {
		if got := r.Form.Get(k); got != v {
			t.Errorf("Stripe received %s = %q, want %q", k, got, v)
		}
	}
	if r.Form.Has("customer") {
		t.Errorf("a tenant without a customer sent customer=%q", r.Form.Get("customer"))
	}

	rec.Rewrite(func(_ string, f url.Values) { f.Set("line_items[0][quantity]", "one") })
	resp, b = in.Do(t, "POST", "/v1/billing/checkout", admin, `{"tier":"pro"}`)
	e := expect(t, "checkout Stripe refuses", resp, b, http.StatusBadRequest)
	if d, _ := e["detail"].(string); !strings.Contains(d, "payment provider refused") {
		t.Errorf("refusal detail: %s", b)
	}
	for _, leak := range []string{"quantity", "validat", "invalid_request", "req_", "stripe"} {
		if strings.Contains(strings.ToLower(string(b)), leak) {
			t.Errorf("Stripe's error leaks (%q): %s", leak, b)
		}
	}
}
