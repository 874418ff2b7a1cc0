package lifecycle_test

import (
	"context"
	"encoding/json"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/billing/lifecycle/lifecycletest"
	"github.com/kgents/kgents-go/controlplane"
	"github.com/kgents/kgents-go/tenancy"
)

// counter reads one series of a counter vector from reg (0 when absent).
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func attr(s sdktrace.ReadOnlySpan, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// TestWebhookMetricsAndSpans checks that every outcome moves
// kgents_stripe_webhooks_total{type,outcome} and is on the span of the
// event's apply, and that webhooks and Stripe calls have their spans.
func TestWebhookMetricsAndSpans(t *testing.T) {
	t.Parallel()
	rec := lifecycletest.StartRecorder(t, lifecycletest.StartMock(t))
	reg := prometheus.NewRegistry()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	cp := controlplane.NewMemory(controlplane.Options{Logger: quiet()})
	tn := newTenant(t, cp)
	ob := &outbox{}
	l := newLifecycle(t, lifecycle.Options{Tenants: cp, Outbox: ob, Registerer: reg, Tracer: tp,
		Config: lifecycle.Config{APIKey: "sk_test_obs", APIBase: rec.URL, Grace: time.Hour}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	const webhooks = "kgents_stripe_webhooks_total"
	count := func(typ, outcome string) float64 {
		return counter(t, reg, webhooks, map[string]string{"type": typ, "outcome": outcome})
	}
	now := time.Now()
	const sub, cus = "sub_obs", "cus_obs"
	withTenant := func(o map[string]any) map[string]any {
		o["parent"].(map[string]any)["subscription_details"].(map[string]any)["metadata"] = map[string]any{"tenant_id": tn.ID}
		return o
	}

	// applied, then a copy of that delivery and a redelivery: duplicate
	// (the first at receipt, the second by the idempotency store).
	paid := evt{id: "evt_obs_paid", typ: "invoice.paid", created: now.Unix(), object: withTenant(invoice("in_obs", sub, cus))}
	sig := sendAt(t, l, paid, now.Add(-time.Minute))
	waitFor(t, "invoice.paid applied", func() bool { return count("invoice.paid", "applied") == 1 })
	if code, _ := send(t, l.ServeWebhook, paid.body(), sig); code != 200 {
		t.Fatalf("copy: %d", code)
	}
	sendAt(t, l, paid, now)
	waitFor(t, "both duplicates counted", func() bool { return count("invoice.paid", "duplicate") == 2 })

	// Ignored, three ways: an unknown type, an event for no tenant, and an
	// update older than the last one applied for its subscription.
	sendAt(t, l, evt{id: "evt_obs_cus", typ: "customer.created", created: now.Unix(), object: map[string]any{"id": "cus_new", "object": "customer"}}, now)
	sendAt(t, l, evt{id: "evt_obs_orphan", typ: "invoice.paid", created: now.Unix(), object: invoice("in_orphan", "sub_orphan", "cus_nobody")}, now)
	newer := evt{id: "evt_obs_new", typ: "customer.subscription.updated", created: now.Unix() + 10, object: subscription(sub, tn.ID, cus, "active", "price_pro_m")}
	sendAt(t, l, newer, now)
	stale := evt{id: "evt_obs_stale", typ: "customer.subscription.updated", created: now.Unix() + 5, object: subscription(sub, tn.ID, cus, "active", "price_ent_m")}
	sendAt(t, l, stale, now)
	// failed: an invoice whose fields do not decode (given up at once).
	sendAt(t, l, evt{id: "evt_obs_bad", typ: "invoice.payment_failed", created: now.Unix(), object: map[string]any{"id": "in_bad", "object": "invoice", "amount_due": "lots"}}, now)
	waitFor(t, "the failed event counted", func() bool { return count("invoice.payment_failed", "failed") == 1 })
	// rejected: a forged signature.
	if code, _ := send(t, l.ServeWebhook, paid.body(), lifecycletest.Sign(paid.body(), "whsec_forged", now)); code != 400 {
		t.Fatalf("forged: %d", code)
	}

	for _, c := range []struct {
		typ, outcome string
		want         float64
	}{
		{"invoice.paid", "received", 4}, // paid, its copy, its redelivery, the orphan
		{"invoice.paid", "applied", 1},
		{"invoice.paid", "duplicate", 2},
		{"invoice.paid", "no_tenant", 1},
		{"other", "received", 1},
		{"other", "unhandled", 1},
		{"customer.subscription.updated", "applied", 1},
		{"customer.subscription.updated", "stale", 1},
		{"invoice.payment_failed", "failed", 1},
		{"invoice.payment_failed", "applied", 0},
		{"unverified", "rejected", 1},
	} {
		if got := count(c.typ, c.outcome); got != c.want {
			t.Errorf("%s{type=%q,outcome=%q} = %v, want %v", webhooks, c.typ, c.outcome, got, c.want)
		}
	}
	if h := l.Health(); h.Applied != 2 || h.Duplicate != 2 || h.Ignored != 3 || h.Failed != 1 || h.Rejected != 1 || h.LastError == nil {
		t.Errorf("health: %+v", h)
	}
	// The stale update changed nothing (the tier is the newer one's) but its
	// OpenMeter event was sent, once: it records what happened in Stripe.
	if got, _ := cp.GetTenant(ctx, tn.ID); got.Tier != tenancy.TierPro {
		t.Errorf("stale update moved the tier: %s", got.Tier)
	}
	if n := ob.published(stale.id, lifecycle.OMSubscriptionUpdated); n != 1 {
		t.Errorf("stale event's subscription.updated handed to the outbox %d times, want 1", n)
	}
	if n := ob.published(paid.id, lifecycle.OMPaymentSuccess); n != 1 {
		t.Errorf("payment.success handed to the outbox %d times, want 1", n)
	}
	var ce struct{ Subject, Source, Type string }
	if err := json.Unmarshal(ob.message(lifecycle.OpenMeterEventID(stale.id, lifecycle.OMSubscriptionUpdated)).Data, &ce); err != nil ||
		ce.Subject != tn.ID || ce.Source != lifecycle.OpenMeterSource || ce.Type != lifecycle.OMSubscriptionUpdated {
		t.Errorf("stale event's CloudEvent: %+v %v", ce, err)
	}

	// Stripe calls: a span and a count each, the refused one an error.
	if _, _, err := l.Checkout(ctx, lifecycle.CheckoutRequest{TenantID: tn.ID, Tier: tenancy.TierPro}); err != nil {
		t.Fatal(err)
	}
	rec.Rewrite(func(_ string, f url.Values) { f.Set("line_items[0][quantity]", "one") })
	if _, _, err := l.Checkout(ctx, lifecycle.CheckoutRequest{TenantID: tn.ID, Tier: tenancy.TierPro}); err == nil {
		t.Fatal("corrupted checkout accepted")
	}
	rec.Rewrite(nil)
	if _, err := l.Portal(ctx, tn.ID, ""); err != nil { // the customer came with the subscription update
		t.Fatal(err)
	}
	for _, c := range []struct {
		call, outcome string
		want          float64
	}{{"checkout.sessions.create", "ok", 1}, {"checkout.sessions.create", "error", 1}, {"billing_portal.sessions.create", "ok", 1}} {
		if got := counter(t, reg, "kgents_stripe_api_calls_total", map[string]string{"call": c.call, "outcome": c.outcome}); got != c.want {
			t.Errorf("kgents_stripe_api_calls_total{call=%q,outcome=%q} = %v, want %v", c.call, c.outcome, got, c.want)
		}
	}

	// Spans.
	var webhookSpans, refused int
	applies := map[string][]string{} // event id → outcomes of its applies
	var failedApply bool
	calls := map[string][]codes.Code{}
	for _, s := range spans.Ended() {
		switch s.Name() {
		case "stripe.webhook":
			webhookSpans++
			if s.SpanKind() != trace.SpanKindServer {
				t.Errorf("stripe.webhook kind %v", s.SpanKind())
			}
			if s.Status().Code == codes.Error {
				refused++
			}
		case "stripe.webhook.apply":
			if s.SpanKind() != trace.SpanKindConsumer {
				t.Errorf("stripe.webhook.apply kind %v", s.SpanKind())
			}
			id, _ := attr(s, "stripe.event_id")
			out, ok := attr(s, "stripe.outcome")
			if !ok && s.Status().Code == codes.Error && id.AsString() == "evt_obs_bad" {
				failedApply = true
			}
			applies[id.AsString()] = append(applies[id.AsString()], out.AsString())
		case "stripe.checkout.sessions.create", "stripe.billing_portal.sessions.create":
			if s.SpanKind() != trace.SpanKindClient {
				t.Errorf("%s kind %v", s.Name(), s.SpanKind())
			}
			if v, _ := attr(s, "rpc.system"); v.AsString() != "stripe" {
				t.Errorf("%s: rpc.system %q", s.Name(), v.AsString())
			}
			if s.Status().Code == codes.Error {
				if v, _ := attr(s, "http.response.status_code"); v.AsInt64() != 400 {
					t.Errorf("%s refused: status code attribute %d, want 400", s.Name(), v.AsInt64())
				}
			}
			calls[s.Name()] = append(calls[s.Name()], s.Status().Code)
		}
	}
	if webhookSpans != 9 || refused != 1 {
		t.Errorf("stripe.webhook spans: %d (%d refused), want 9 (1)", webhookSpans, refused)
	}
	for id, want := range map[string][]string{
		"evt_obs_paid": {"applied", "duplicate"}, "evt_obs_cus": {"unhandled"}, "evt_obs_orphan": {"no_tenant"},
		"evt_obs_new": {"applied"}, "evt_obs_stale": {"stale"},
	} {
		if got := applies[id]; len(got) != len(want) || got[0] != want[0] || (len(want) > 1 && got[1] != want[1]) {
			t.Errorf("stripe.webhook.apply of %s: outcomes %v, want %v", id, got, want)
		}
	}
	if !failedApply {
		t.Errorf("no failed stripe.webhook.apply span for evt_obs_bad: %v", applies)
	}
	if got := calls["stripe.checkout.sessions.create"]; len(got) != 2 || got[0] == codes.Error || got[1] != codes.Error {
		t.Errorf("checkout spans: %v, want one ok and one error", got)
	}
	if got := calls["stripe.billing_portal.sessions.create"]; len(got) != 1 || got[0] == codes.Error {
		t.Errorf("portal spans: %v", got)
	}
}
