package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/billing/lifecycle/lifecycletest"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// tenantState is the tenant as a server's cache holds it (the operator's
// GET /v1/admin/tenants/{id}: polling with the tenant's own key would spend
// its quota).
type tenantState struct {
	Tier       string     `json:"tier"`
	Status     string     `json:"status"`
	CustomerID string     `json:"stripe_customer_id"`
	GraceUntil *time.Time `json:"grace_until"`
}

func tenantOn(t *testing.T, in *servertest.Instance, id string) tenantState {
	t.Helper()
	resp, b := in.Do(t, "GET", "/v1/admin/tenants/"+id, ops, "")
	var st tenantState
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &st) != nil {
		t.Fatalf("GET /v1/admin/tenants/%s: %d %s", id, resp.StatusCode, b)
	}
	return st
}

// webhookHealth is GET /webhooks/stripe/health.
type webhookHealth struct {
	Received, Applied, Duplicate, Ignored, Failed, Rejected int64
}

func stripeHealth(t *testing.T, in *servertest.Instance) webhookHealth {
	t.Helper()
	resp, b := in.Do(t, "GET", "/webhooks/stripe/health", "", "")
	var h webhookHealth
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &h) != nil {
		t.Fatalf("GET /webhooks/stripe/health: %d %s", resp.StatusCode, b)
	}
	return h
}

func sumHealth(t *testing.T, ins ...*servertest.Instance) webhookHealth {
	t.Helper()
	var s webhookHealth
	for _, in := range ins {
		h := stripeHealth(t, in)
		s.Received += h.Received
		s.Applied += h.Applied
		s.Duplicate += h.Duplicate
		s.Ignored += h.Ignored
		s.Failed += h.Failed
		s.Rejected += h.Rejected
	}
	return s
}

// eventually polls ok until it holds or within passes.
func eventually(t *testing.T, within time.Duration, what string, ok func() error) {
	t.Helper()
	eventuallyEvery(t, within, 20*time.Millisecond, what, ok)
}

func eventuallyEvery(t *testing.T, within, every time.Duration, what string, ok func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := ok()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, within, err)
		}
		time.Sleep(every)
	}
}

// TestDunningEndToEnd runs the whole billing lifecycle through two kgentsd
// sharing NATS, over HTTP, with a 2 s BILLING_GRACE, once per idempotency
// store (JetStream KV; Redis with REDIS_URL): signed webhooks move the
// tenant to PRO, to past_due (calls still work), past the grace to 402
// tenant_suspended, back to active when paid and to FREE when the
// subscription is deleted, each change visible on both servers within 2 s.
// A copy of a delivery and a redelivery change nothing, and OpenMeter (a
// real HTTP stand-in fed by the durable outbox and the metering processor)
// receives each of the six lifecycle events exactly once, from
// kgents-stripe-bridge, with the tenant as subject.
func TestDunningEndToEnd(t *testing.T) {
	t.Parallel()
	rc, redisURL := lifecycletest.RedisClient(t)
	for _, tc := range []struct {
		name string
		env  map[string]string
		// marked reports whether the store holds the applied event id.
		marked func(ctx context.Context, js jetstream.JetStream, id string) (bool, error)
	}{
		{"jetstream-kv", nil, func(ctx context.Context, js jetstream.JetStream, id string) (bool, error) {
			kv, err := js.KeyValue(ctx, lifecycle.SeenBucket)
			if err != nil {
				return false, err
			}
			if _, err = kv.Get(ctx, id); errors.Is(err, jetstream.ErrKeyNotFound) {
				return false, nil
			}
			return err == nil, err
		}},
		{"redis", map[string]string{"REDIS_URL": redisURL}, func(ctx context.Context, _ jetstream.JetStream, id string) (bool, error) {
			n, err := rc.Exists(ctx, lifecycle.RedisKeyPrefix+id).Result()
			return n == 1, err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nats := natstest.Start(t)
			_, js := nats.Connect(t)
			om := startOpenMeter(t)
			env := map[string]string{
				"NATS_SERVERS": nats.URL(), "KGENTS_SIGNUP": "open",
				"STRIPE_WEBHOOK_SECRET": testWebhookSecret, "STRIPE_PRICE_PRO_MONTHLY": "price_pro_month", "BILLING_GRACE": "2s",
				"OPENMETER_ENABLED": "true", "OPENMETER_BASE_URL": om.url, "OPENMETER_API_KEY": "om_test_key", "OPENMETER_FLUSH_INTERVAL": "0.05",
			}
			maps.Copy(env, tc.env)
			withName := func(name string) map[string]string {
				e := maps.Clone(env)
				e["KGENTS_REPLICA_NAME"] = name
				return e
			}
			a, b := servertest.Start(t, withName("a")), servertest.Start(t, withName("b"))
			both := []*servertest.Instance{a, b}
			// Ids of this run only: the Redis may be shared.
			run := fmt.Sprintf("%s_%d", tc.name[:5], time.Now().UnixNano())
			tenantID, admin := signUp(t, a, "dunning-"+run+"@example.com")
			sub, cus := "sub_"+run, "cus_"+run
			ctx := context.Background()

			// post sends a webhook signed at ts to in and returns its signature.
			post := func(in *servertest.Instance, body []byte, ts time.Time) string {
				t.Helper()
				sig := lifecycletest.Sign(body, testWebhookSecret, ts)
				if code, out := postWebhook(t, in.URL, body, sig); code != http.StatusOK || out["status"] != "received" {
					t.Fatalf("webhook to %s: %d %v", in.URL, code, out)
				}
				return sig
			}
			// onBoth waits (2 s at most) until GET /v1/billing satisfies ok on both servers.
			onBoth := func(what string, ok func(tenantState) bool) {
				t.Helper()
				start := time.Now()
				for _, in := range both {
					for {
						st := tenantOn(t, in, tenantID)
						if ok(st) {
							break
						}
						if time.Since(start) > 2*time.Second {
							t.Fatalf("%s: not on both servers within 2 s; %s shows %+v", what, in.URL, st)
						}
						time.Sleep(10 * time.Millisecond)
					}
				}
				t.Logf("%s: on both servers after %v", what, time.Since(start).Round(time.Millisecond))
			}
			call := func(in *servertest.Instance) (int, string) {
				resp, b := in.Do(t, "GET", "/v1/kgent/sessions", admin, "")
				var e struct{ Code string }
				_ = json.Unmarshal(b, &e)
				return resp.StatusCode, e.Code
			}
			callsWork := func(when string) {
				t.Helper()
				for _, in := range both {
					if code, c := call(in); code != http.StatusOK {
						t.Fatalf("%s: a tenant call on %s: %d %s", when, in.URL, code, c)
					}
				}
			}

			now := time.Now().Unix()
			ev := map[string][]byte{
				"checkout.session.completed": stripeEvent("evt_co_"+run, "checkout.session.completed", now, map[string]any{
					"id": "cs_" + run, "object": "checkout.session", "mode": "subscription", "client_reference_id": tenantID,
					"customer": cus, "subscription": sub, "amount_total": 2900, "currency": "usd"}),
				"customer.subscription.created": stripeEvent("evt_sc_"+run, "customer.subscription.created", now+1, subscriptionObject(sub, tenantID, cus, "active", now)),
				"invoice.payment_failed":        stripeEvent("evt_pf_"+run, "invoice.payment_failed", now+2, invoiceObject("in_"+run, sub, cus, tenantID)),
				"invoice.paid":                  stripeEvent("evt_ip_"+run, "invoice.paid", now+3, invoiceObject("in_"+run, sub, cus, tenantID)),
				"customer.subscription.updated": stripeEvent("evt_su_"+run, "customer.subscription.updated", now+4, subscriptionObject(sub, tenantID, cus, "active", now)),
				"customer.subscription.deleted": stripeEvent("evt_sd_"+run, "customer.subscription.deleted", now+5, subscriptionObject(sub, tenantID, cus, "canceled", now)),
			}
			signed := time.Now().Add(-time.Minute) // within the 300 s tolerance

			post(a, ev["checkout.session.completed"], signed)
			onBoth("checkout records the customer", func(s tenantState) bool { return s.CustomerID == cus && s.Tier == "free" })
			post(b, ev["customer.subscription.created"], signed)
			onBoth("an active subscription sets PRO", func(s tenantState) bool { return s.Tier == "pro" && s.Status == "active" })

			post(a, ev["invoice.payment_failed"], signed)
			onBoth("a failed payment sets past_due with a grace", func(s tenantState) bool {
				return s.Status == "past_due" && s.GraceUntil != nil && s.Tier == "pro"
			})
			graceUntil := *tenantOn(t, b, tenantID).GraceUntil
			if d := time.Until(graceUntil); d <= 0 || d > 2*time.Second {
				t.Fatalf("grace_until %v is %v away, want within BILLING_GRACE (2 s)", graceUntil, d)
			}
			callsWork("past_due within the grace")

			// Past the grace: refused at once on both (the lazy check), then
			// written as suspended by a sweep.
			eventuallyEvery(t, 2*time.Second+time.Until(graceUntil), 100*time.Millisecond, "402 on A after the grace", func() error {
				if code, c := call(a); code != http.StatusPaymentRequired || c != "tenant_suspended" {
					return fmt.Errorf("%d %s", code, c)
				}
				return nil
			})
			if time.Now().Before(graceUntil) {
				t.Fatalf("refused before the grace ended (%v)", graceUntil)
			}
			if code, c := call(b); code != http.StatusPaymentRequired || c != "tenant_suspended" {
				t.Fatalf("B after the grace: %d %s, want 402 tenant_suspended", code, c)
			}
			eventually(t, 5*time.Second, "the sweep writes suspended", func() error {
				for _, in := range both {
					if s := tenantOn(t, in, tenantID); s.Status != "suspended" {
						return fmt.Errorf("%s: %+v", in.URL, s)
					}
				}
				return nil
			})

			post(b, ev["invoice.paid"], signed)
			onBoth("paid: active, grace cleared", func(s tenantState) bool { return s.Status == "active" && s.GraceUntil == nil && s.Tier == "pro" })
			callsWork("paid")

			// The failed payment again: a copy of its delivery (dropped by the
			// stream) and a redelivery signed anew (stopped by the store).
			pfBody := ev["invoice.payment_failed"]
			if code, out := postWebhook(t, a.URL, pfBody, lifecycletest.Sign(pfBody, testWebhookSecret, signed)); code != http.StatusOK {
				t.Fatalf("copy: %d %v", code, out)
			}
			post(b, pfBody, signed.Add(30*time.Second))
			post(a, ev["customer.subscription.updated"], signed)
			eventually(t, 5*time.Second, "the update applied after the redelivery", func() error {
				if h := sumHealth(t, a, b); h.Applied != 5 || h.Duplicate != 2 {
					return fmt.Errorf("%+v", h)
				}
				return nil
			})
			if s := tenantOn(t, a, tenantID); s.Status != "active" || s.GraceUntil != nil {
				t.Fatalf("the redelivered failed payment changed the tenant: %+v", s)
			}
			callsWork("after the redelivery")

			post(a, ev["customer.subscription.deleted"], signed)
			onBoth("deleted: free and active", func(s tenantState) bool { return s.Tier == "free" && s.Status == "active" && s.CustomerID == cus })

			// The applier changes the tenant before it counts the event.
			eventually(t, 5*time.Second, "every event counted", func() error {
				if h := sumHealth(t, a, b); h.Received != 8 || h.Applied != 6 || h.Duplicate != 2 || h.Ignored != 0 || h.Failed != 0 || h.Rejected != 0 {
					return fmt.Errorf("webhook health on both: %+v", h)
				}
				return nil
			})
			for typ, body := range ev {
				var e struct{ ID string }
				_ = json.Unmarshal(body, &e)
				if ok, err := tc.marked(ctx, js, e.ID); err != nil || !ok {
					t.Errorf("%s (%s) not in the %s store: %v", e.ID, typ, tc.name, err)
				}
			}

			// OpenMeter: each lifecycle event once, by the real outbox and processor.
			omType := map[string]string{
				"checkout.session.completed": "subscription.started", "customer.subscription.created": "subscription.started",
				"customer.subscription.updated": "subscription.updated", "customer.subscription.deleted": "subscription.ended",
				"invoice.paid": "payment.success", "invoice.payment_failed": "payment.failed",
			}
			om.waitFor(t, "the six lifecycle events", func() bool {
				for typ, body := range ev {
					var e struct{ ID string }
					_ = json.Unmarshal(body, &e)
					if om.deliveries(lifecycle.OpenMeterEventID(e.ID, omType[typ])) == 0 {
						return false
					}
				}
				return true
			})
			for typ, body := range ev {
				var e struct{ ID string }
				_ = json.Unmarshal(body, &e)
				id := lifecycle.OpenMeterEventID(e.ID, omType[typ])
				if n := om.deliveries(id); n != 1 {
					t.Errorf("%s: OpenMeter received %s %d times, want 1", typ, omType[typ], n)
				}
				om.mu.Lock()
				got := om.events[id]
				om.mu.Unlock()
				if got["type"] != omType[typ] || got["source"] != lifecycle.OpenMeterSource || got["subject"] != tenantID || dataOf(got)["stripe_event_id"] != e.ID {
					t.Errorf("%s: OpenMeter event %v", typ, got)
				}
			}
			stripeTypes := 0
			for _, typ := range []string{"subscription.started", "subscription.updated", "subscription.ended", "payment.success", "payment.failed"} {
				stripeTypes += len(om.byType(typ))
			}
			if stripeTypes != 6 {
				t.Errorf("OpenMeter holds %d subscription/payment events, want 6", stripeTypes)
			}
			if p := om.problems(); len(p) != 0 {
				t.Errorf("OpenMeter refused batches: %v", p)
			}
		})
	}
}

func subscriptionObject(id, tenantID, customer, status string, now int64) map[string]any {
	return map[string]any{
		"id": id, "object": "subscription", "customer": customer, "status": status, "metadata": map[string]any{"tenant_id": tenantID},
		"items": map[string]any{"object": "list", "data": []any{map[string]any{
			"id": "si_" + id, "object": "subscription_item", "quantity": 1, "current_period_end": now + 30*86400,
			"price": map[string]any{"id": "price_pro_month", "object": "price", "recurring": map[string]any{"interval": "month"}},
		}}},
	}
}

func invoiceObject(id, sub, customer, tenantID string) map[string]any {
	return map[string]any{
		"id": id, "object": "invoice", "customer": customer, "amount_paid": 2900, "amount_due": 2900, "currency": "usd",
		"attempt_count": 1, "billing_reason": "subscription_cycle",
		"parent": map[string]any{"type": "subscription_details", "subscription_details": map[string]any{
			"subscription": sub, "metadata": map[string]any{"tenant_id": tenantID}}},
	}
}
