package lifecycle_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	neturl "net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/billing/lifecycle/lifecycletest"
	"github.com/kgents/kgents-go/controlplane"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/streaming/natstest"
	"github.com/kgents/kgents-go/tenancy"
)

const secret = "whsec_test_secret"

var prices = map[tenancy.Tier]map[string]string{
	tenancy.TierPro:        {"month": "price_pro_m", "year": "price_pro_y"},
	tenancy.TierEnterprise: {"month": "price_ent_m", "year": "price_ent_y"},
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// outbox records the OpenMeter events by id (as JetStream dedupes them).
type outbox struct {
	mu    sync.Mutex
	byID  map[string]streaming.Message
	calls map[string]int // publishes per id, repeats included
	n     int
}

func (o *outbox) PublishDurable(_ context.Context, m streaming.Message) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.byID == nil {
		o.byID, o.calls = map[string]streaming.Message{}, map[string]int{}
	}
	o.byID[m.MsgID] = m
	o.calls[m.MsgID]++
	o.n++
	return nil
}

func (o *outbox) message(id string) streaming.Message {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.byID[id]
}

// published is how many times the OpenMeter event of a Stripe event was
// handed to the outbox.
func (o *outbox) published(stripeEventID, omType string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.calls[lifecycle.OpenMeterEventID(stripeEventID, omType)]
}

func (o *outbox) types() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := map[string]int{}
	for _, m := range o.byID {
		var ce struct {
			Type, Subject, Source string
		}
		_ = json.Unmarshal(m.Data, &ce)
		out[ce.Type]++
	}
	return out
}

func newTenant(t *testing.T, cp *controlplane.Service) *controlplane.Tenant {
	t.Helper()
	tn, err := cp.CreateTenant(context.Background(), controlplane.SystemActor("system"), "Acme", fmt.Sprintf("billing-%d@example.com", time.Now().UnixNano()), tenancy.TierFree)
	if err != nil {
		t.Fatal(err)
	}
	return tn
}

func newLifecycle(t *testing.T, o lifecycle.Options) *lifecycle.Lifecycle {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quiet()
	}
	o.Config.WebhookSecret = or(o.Config.WebhookSecret, secret)
	if o.Config.Prices == nil {
		o.Config.Prices = prices
	}
	if o.Registerer == nil {
		o.Registerer = prometheus.NewRegistry()
	}
	l, err := lifecycle.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestCheckoutAndPortalAgainstStripeMock runs every Stripe call against
// stripe-mock through a recording proxy, so the parameters Stripe receives
// are checked (stripe-mock answers canned objects whatever it is sent).
func TestCheckoutAndPortalAgainstStripeMock(t *testing.T) {
	rec := lifecycletest.StartRecorder(t, lifecycletest.StartMock(t))
	ctx := context.Background()
	cp := controlplane.NewMemory(controlplane.Options{Logger: quiet()})
	tn := newTenant(t, cp)
	l := newLifecycle(t, lifecycle.Options{Tenants: cp, Config: lifecycle.Config{
		APIKey: "sk_test_123", APIBase: rec.URL, SuccessURL: "https://app.example/ok", CancelURL: "https://app.example/no", ReturnURL: "https://app.example/back",
	}})
	const checkoutPath, portalPath = "/v1/checkout/sessions", "/v1/billing_portal/sessions"
	// want checks the form Stripe received: each key's value, "" for absent.
	want := func(what, path string, fields map[string]string) {
		t.Helper()
		r, ok := rec.Last(path)
		if !ok || r.Method != http.MethodPost {
			t.Fatalf("%s: no POST %s reached Stripe: %+v", what, path, rec.Requests())
		}
		if got := r.Header.Get("Authorization"); got != "Bearer sk_test_123" {
			t.Errorf("%s: Authorization %q", what, got)
		}
		for k, v := range fields {
			if _, present := r.Form[k]; v == "" && present {
				t.Errorf("%s: %s sent (%q), want it absent", what, k, r.Form.Get(k))
			} else if got := r.Form.Get(k); got != v {
				t.Errorf("%s: %s = %q, want %q (form %v)", what, k, got, v, r.Form)
			}
		}
	}

	url, id, err := l.Checkout(ctx, lifecycle.CheckoutRequest{TenantID: tn.ID, Tier: tenancy.TierPro})
	if err != nil || url == "" || id == "" {
		t.Fatalf("checkout: %q %q %v", url, id, err)
	}
	want("first checkout", checkoutPath, map[string]string{
		"mode": "subscription", "line_items[0][price]": "price_pro_m", "line_items[0][quantity]": "1",
		"client_reference_id": tn.ID, "subscription_data[metadata][tenant_id]": tn.ID, "metadata[tenant_id]": tn.ID,
		"success_url": "https://app.example/ok", "cancel_url": "https://app.example/no",
		// No customer yet: Stripe makes one for the tenant's billing email.
		"customer": "", "customer_email": tn.Email,
	})
	if _, _, err := l.Checkout(ctx, lifecycle.CheckoutRequest{TenantID: tn.ID, Tier: tenancy.TierPro, Interval: "week"}); !errors.Is(err, lifecycle.ErrNoPrice) {
		t.Errorf("unknown interval: %v", err)
	}
	n := len(rec.Requests())
	if _, err := l.Portal(ctx, tn.ID, ""); !errors.Is(err, lifecycle.ErrNoCustomer) {
		t.Errorf("portal without customer: %v", err)
	}
	if len(rec.Requests()) != n {
		t.Errorf("a refused interval or a portal without customer reached Stripe: %+v", rec.Requests()[n-1:])
	}
	cus := "cus_mock1"
	if _, _, err := cp.UpdateBilling(ctx, controlplane.SystemActor("stripe"), tn.ID, "billing.checkout", controlplane.BillingPatch{CustomerID: &cus}, nil); err != nil {
		t.Fatal(err)
	}
	// The customer is reused by the next checkout, and the caller's URLs win.
	if _, _, err := l.Checkout(ctx, lifecycle.CheckoutRequest{TenantID: tn.ID, Tier: tenancy.TierEnterprise, Interval: "year",
		SuccessURL: "https://app.example/paid", CancelURL: "https://app.example/later"}); err != nil {
		t.Fatalf("checkout with customer: %v", err)
	}
	want("checkout with a customer", checkoutPath, map[string]string{
		"mode": "subscription", "line_items[0][price]": "price_ent_y", "line_items[0][quantity]": "1",
		"client_reference_id": tn.ID, "subscription_data[metadata][tenant_id]": tn.ID,
		"success_url": "https://app.example/paid", "cancel_url": "https://app.example/later",
		"customer": cus, "customer_email": "",
	})
	purl, err := l.Portal(ctx, tn.ID, "")
	if err != nil || purl == "" {
		t.Fatalf("portal: %q %v", purl, err)
	}
	want("portal", portalPath, map[string]string{"customer": cus, "return_url": "https://app.example/back"})
	if _, err := l.Portal(ctx, tn.ID, "https://app.example/settings"); err != nil {
		t.Fatal(err)
	}
	want("portal with a return URL", portalPath, map[string]string{"customer": cus, "return_url": "https://app.example/settings"})
	st, err := l.Get(ctx, tn.ID)
	if err != nil || st.CustomerID != cus || st.Subscription != nil || st.Tier != tenancy.TierFree {
		t.Fatalf("get: %+v %v", st, err)
	}

	// A real Stripe 4xx: the request is corrupted in flight so that
	// stripe-mock's own validator refuses it (400 invalid_request_error, a
	// message naming the parameter). It maps to ErrProviderRejected, whose
	// text says nothing of Stripe's.
	rec.Rewrite(func(path string, f neturl.Values) {
		if path == checkoutPath {
			f.Set("line_items[0][quantity]", "one")
		}
	})
	_, _, err = l.Checkout(ctx, lifecycle.CheckoutRequest{TenantID: tn.ID, Tier: tenancy.TierPro})
	if !errors.Is(err, lifecycle.ErrProviderRejected) {
		t.Errorf("stripe-mock's 400: %v, want ErrProviderRejected", err)
	} else if msg := err.Error(); strings.Contains(msg, "quantity") || strings.Contains(msg, "validat") || strings.Contains(msg, "invalid_request") {
		t.Errorf("Stripe's error text leaked: %q", msg)
	}
	rec.Rewrite(nil)

	// No price configured for the tier: refused before any Stripe call.
	n = len(rec.Requests())
	noPrice := newLifecycle(t, lifecycle.Options{Tenants: cp, Config: lifecycle.Config{APIKey: "sk_test_123", APIBase: rec.URL,
		Prices: map[tenancy.Tier]map[string]string{tenancy.TierPro: {"month": ""}}}})
	if _, _, err := noPrice.Checkout(ctx, lifecycle.CheckoutRequest{TenantID: tn.ID, Tier: tenancy.TierPro}); !errors.Is(err, lifecycle.ErrNoPrice) {
		t.Errorf("no price: %v", err)
	}
	if len(rec.Requests()) != n {
		t.Errorf("a checkout without a price reached Stripe")
	}
	off := newLifecycle(t, lifecycle.Options{Tenants: cp})
	if _, _, err := off.Checkout(ctx, lifecycle.CheckoutRequest{TenantID: tn.ID, Tier: tenancy.TierPro}); !errors.Is(err, lifecycle.ErrNotConfigured) {
		t.Errorf("not configured: %v", err)
	}
	// An unreachable Stripe is 503-class.
	down := newLifecycle(t, lifecycle.Options{Tenants: cp, Config: lifecycle.Config{APIKey: "sk_test_123", APIBase: "http://127.0.0.1:1"}})
	if _, err := down.Portal(ctx, tn.ID, ""); !errors.Is(err, lifecycle.ErrProviderUnavailable) {
		t.Errorf("Stripe down: %v", err)
	}
}

// ---- webhook payloads ----

type evt struct {
	id, typ string
	created int64
	object  map[string]any
}

func (e evt) body() []byte {
	b, _ := json.Marshal(map[string]any{
		"id": e.id, "object": "event", "api_version": "2026-03-25.dahlia", "created": e.created, "type": e.typ,
		"livemode": false, "pending_webhooks": 1, "data": map[string]any{"object": e.object},
	})
	return b
}

func send(t *testing.T, h http.HandlerFunc, body []byte, sig string) (int, map[string]any) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/webhooks/stripe", bytes.NewReader(body))
	if sig != "" {
		r.Header.Set("Stripe-Signature", sig)
	}
	w := httptest.NewRecorder()
	h(w, r)
	var out map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &out)
	return w.Code, out
}

func sendSigned(t *testing.T, l *lifecycle.Lifecycle, e evt) {
	t.Helper()
	b := e.body()
	code, out := send(t, l.ServeWebhook, b, lifecycletest.Sign(b, secret, time.Time{}))
	if code != 200 || out["status"] != "received" || out["event_id"] != e.id || out["event_type"] != e.typ {
		t.Fatalf("%s: %d %v", e.id, code, out)
	}
}

func subscription(id, tenantID, customer, status, price string) map[string]any {
	return map[string]any{
		"id": id, "object": "subscription", "customer": customer, "status": status, "metadata": map[string]any{"tenant_id": tenantID},
		"cancel_at_period_end": false, "trial_end": nil,
		"items": map[string]any{"object": "list", "data": []any{map[string]any{
			"id": "si_1", "object": "subscription_item", "quantity": 1, "current_period_end": time.Now().Add(30 * 24 * time.Hour).Unix(),
			"price": map[string]any{"id": price, "object": "price", "recurring": map[string]any{"interval": "month"}},
		}}},
	}
}

func invoice(id, sub, customer string) map[string]any {
	return map[string]any{
		"id": id, "object": "invoice", "customer": customer, "amount_paid": 2900, "amount_due": 2900, "currency": "usd",
		"attempt_count": 1, "billing_reason": "subscription_cycle",
		"parent": map[string]any{"type": "subscription_details", "subscription_details": map[string]any{"subscription": sub, "metadata": map[string]any{}}},
	}
}

func TestWebhookSignatures(t *testing.T) {
	cp := controlplane.NewMemory(controlplane.Options{Logger: quiet()})
	tn := newTenant(t, cp)
	ob := &outbox{}
	l := newLifecycle(t, lifecycle.Options{Tenants: cp, Outbox: ob})
	body := evt{id: "evt_sig1", typ: "invoice.paid", created: time.Now().Unix(), object: invoice("in_1", "sub_1", "cus_1")}.body()
	for name, sig := range map[string]string{
		"missing": "",
		"forged":  lifecycletest.Sign(body, "whsec_other", time.Time{}),
		"stale":   lifecycletest.Sign(body, secret, time.Now().Add(-6*time.Minute)),
		"garbage": "t=abc,v1=zz",
	} {
		if code, _ := send(t, l.ServeWebhook, body, sig); code != 400 {
			t.Errorf("%s signature: %d, want 400", name, code)
		}
	}
	// A body altered after signing.
	sig := lifecycletest.Sign(body, secret, time.Time{})
	if code, _ := send(t, l.ServeWebhook, append(bytes.Clone(body[:len(body)-1]), []byte(` }`)...), sig); code != 400 {
		t.Errorf("tampered body: %d", code)
	}
	if h := l.Health(); h.Received != 0 || h.Rejected != 5 {
		t.Errorf("health after refusals: %+v", h)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Run(ctx)
	// Unknown type: 200, counted as ignored. The applier takes events in
	// order, so once it is counted nothing refused before it was stored.
	sendSigned(t, l, evt{id: "evt_unknown", typ: "customer.created", created: time.Now().Unix(), object: map[string]any{"id": "cus_x", "object": "customer"}})
	waitFor(t, "unknown type counted", func() bool { return l.Health().Ignored == 1 })
	if h := l.Health(); h.Received != 1 || h.Applied != 0 || h.Failed != 0 || h.Rejected != 5 {
		t.Errorf("health after refusals and one unknown event: %+v", h)
	}
	if ob.n != 0 {
		t.Errorf("refused webhooks reached the outbox")
	}
	if got, _ := cp.GetTenant(ctx, tn.ID); got.UpdatedAt != tn.UpdatedAt {
		t.Errorf("refused webhook changed the tenant")
	}
	// Not configured: 501.
	off, err := lifecycle.New(lifecycle.Options{Tenants: cp, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := send(t, off.ServeWebhook, body, sig); code != 501 {
		t.Errorf("no secret: %d, want 501", code)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// jsReplica is one replica: a control plane and a lifecycle on shared NATS.
type jsReplica struct {
	cp *controlplane.Service
	l  *lifecycle.Lifecycle
}

func startReplica(t *testing.T, srv *natstest.Server, grace time.Duration, ob lifecycle.Outbox, idem lifecycle.Idempotency) *jsReplica {
	t.Helper()
	nc, js := srv.Connect(t)
	cp := controlplane.NewJetStream(js, 1, nc.IsConnected, controlplane.Options{Logger: quiet()})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); cp.Run(ctx) }()
	l := newLifecycle(t, lifecycle.Options{Tenants: cp, JetStream: js, Outbox: ob, Idempotency: idem,
		Config: lifecycle.Config{Grace: grace}, SweepEvery: 200 * time.Millisecond})
	go func() { defer wg.Done(); l.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := cp.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	return &jsReplica{cp: cp, l: l}
}

// TestLifecycleOnTwoReplicas drives the whole path — checkout, PRO,
// failed payment, grace, suspended, paid, deleted — with events sent to
// either replica, duplicates and an out-of-order one, and checks every
// change on both replicas within 2 s, the audit trail and OpenMeter.
func TestLifecycleOnTwoReplicas(t *testing.T) {
	srv := natstest.Start(t)
	ob := &outbox{}
	const grace = 1500 * time.Millisecond
	a := startReplica(t, srv, grace, ob, nil)
	b := startReplica(t, srv, grace, ob, nil)
	ctx := context.Background()
	tn := newTenant(t, a.cp)
	_, secretKey, err := a.cp.CreateKey(ctx, controlplane.SystemActor("system"), tn.ID, controlplane.KeySpec{Name: "k", Scopes: tenancy.ScopeRead | tenancy.ScopeAdmin})
	if err != nil {
		t.Fatal(err)
	}
	onBoth := func(what string, ok func(*controlplane.Tenant) bool) {
		t.Helper()
		start := time.Now()
		for _, r := range []*jsReplica{a, b} {
			for {
				got, err := r.cp.GetTenant(ctx, tn.ID)
				if err == nil && ok(got) {
					break
				}
				if time.Since(start) > 2*time.Second {
					t.Fatalf("%s: not on every replica within 2 s: %+v", what, got)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
	}
	now := time.Now().Unix()
	const sub, cus = "sub_life1", "cus_life1"
	checkout := evt{id: "evt_co", typ: "checkout.session.completed", created: now, object: map[string]any{
		"id": "cs_1", "object": "checkout.session", "mode": "subscription", "client_reference_id": tn.ID, "customer": cus,
		"subscription": sub, "amount_total": 2900, "currency": "usd", "metadata": map[string]any{},
	}}
	sendSigned(t, a.l, checkout)
	onBoth("checkout records the customer", func(x *controlplane.Tenant) bool {
		return x.StripeCustomerID == cus && x.StripeSubscriptionID == sub
	})
	created := evt{id: "evt_sc", typ: "customer.subscription.created", created: now + 1, object: subscription(sub, "", cus, "active", "price_pro_m")}
	sendSigned(t, b.l, created) // found through the customer mapping (no metadata)
	onBoth("active subscription sets PRO", func(x *controlplane.Tenant) bool { return x.Tier == tenancy.TierPro })
	// Duplicates, to both replicas.
	sendSigned(t, a.l, checkout)
	sendSigned(t, b.l, created)
	// An update older than the last applied event: recorded and ignored.
	sendSigned(t, a.l, evt{id: "evt_old", typ: "customer.subscription.updated", created: now - 100, object: subscription(sub, tn.ID, cus, "active", "price_ent_m")})
	failed := evt{id: "evt_pf", typ: "invoice.payment_failed", created: now + 2, object: invoice("in_1", sub, cus)}
	sendSigned(t, b.l, failed)
	onBoth("failed payment sets past_due with a grace", func(x *controlplane.Tenant) bool {
		return x.Status == controlplane.StatusPastDue && x.GraceUntil != nil && x.Tier == tenancy.TierPro
	})
	if id, err := a.cp.Authenticate(secretKey); err != nil || id.TenantStatus != controlplane.StatusPastDue {
		t.Fatalf("past_due keeps working: %v", err)
	}
	sendSigned(t, a.l, evt{id: "evt_su_pd", typ: "customer.subscription.updated", created: now + 3, object: subscription(sub, tn.ID, cus, "past_due", "price_pro_m")})
	first, _ := a.cp.GetTenant(ctx, tn.ID)
	// The grace ends: the sweep suspends (lazily, auth refuses at once).
	time.Sleep(grace)
	onBoth("suspended after the grace", func(x *controlplane.Tenant) bool { return x.Status == controlplane.StatusSuspended })
	if first.GraceUntil == nil {
		t.Fatal("no grace")
	}
	paid := evt{id: "evt_ip", typ: "invoice.paid", created: now + 4, object: invoice("in_1", sub, cus)}
	sendSigned(t, b.l, paid)
	onBoth("paid: active, grace cleared", func(x *controlplane.Tenant) bool { return x.Status == controlplane.StatusActive && x.GraceUntil == nil })
	st, err := b.l.Get(ctx, tn.ID)
	if err != nil || st.Subscription == nil || st.Subscription.ID != sub || st.Subscription.PriceID != "price_pro_m" || st.Subscription.Interval != "month" {
		t.Fatalf("GET billing: %+v %v", st, err)
	}
	sendSigned(t, a.l, paid) // duplicate
	deleted := evt{id: "evt_sd", typ: "customer.subscription.deleted", created: now + 5, object: subscription(sub, tn.ID, cus, "canceled", "price_pro_m")}
	sendSigned(t, a.l, deleted)
	onBoth("deleted: free and active", func(x *controlplane.Tenant) bool {
		return x.Tier == tenancy.TierFree && x.Status == controlplane.StatusActive && x.StripeSubscriptionID == "" && x.StripeCustomerID == cus
	})
	waitFor(t, "every event accounted for", func() bool {
		ha, hb := a.l.Health(), b.l.Health()
		return ha.Applied+hb.Applied == 6 && ha.Duplicate+hb.Duplicate >= 3 && ha.Ignored+hb.Ignored == 1
	})
	// OpenMeter: each lifecycle event once, the tenant as subject, the
	// Stripe bridge as source.
	want := map[string]int{"subscription.started": 2, "subscription.updated": 2, "payment.failed": 1, "payment.success": 1, "subscription.ended": 1}
	got := ob.types()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("OpenMeter %s: %d, want %d (all %v)", k, got[k], v, got)
		}
	}
	for _, m := range ob.byID {
		var ce map[string]any
		_ = json.Unmarshal(m.Data, &ce)
		if ce["subject"] != tn.ID || ce["source"] != "kgents-stripe-bridge" || m.MsgID != ce["id"] {
			t.Errorf("OpenMeter event: %s", m.Data)
		}
	}
	// Audit: one entry per change, actor stripe (system for the sweep).
	entries, err := a.cp.ListAudit(ctx, tn.ID, time.Time{}, 100)
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]int{}
	for _, e := range entries {
		actions[e.Actor+" "+e.Action]++
	}
	if actions["stripe billing.checkout"] != 1 || actions["system billing.grace_expired"] != 1 || actions["stripe billing.subscription"] != 4 {
		t.Errorf("audit: %v", actions)
	}
}

// ---- idempotency stores: one table for every implementation ----

func TestIdempotencyStores(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.Connect(t)
	rc, _ := lifecycletest.RedisClient(t)
	stores := map[string]func(ttl time.Duration) lifecycle.Idempotency{
		"memory":       lifecycle.NewMemoryIdempotency,
		"jetstream-kv": func(ttl time.Duration) lifecycle.Idempotency { return lifecycle.NewKVIdempotency(js, 1, ttl) },
		"redis":        func(ttl time.Duration) lifecycle.Idempotency { return lifecycle.NewRedisIdempotency(rc, ttl) },
	}
	for name, mk := range stores {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := mk(time.Hour)
			id := fmt.Sprintf("evt_%s_%d", name, time.Now().UnixNano())
			steps := []struct {
				op        string
				want      bool
				wantError bool
			}{
				{"seen", false, false},
				{"mark", true, false},
				{"seen", true, false},
				{"mark", false, false},
				{"bad-mark", false, true},
			}
			for i, st := range steps {
				var got bool
				var err error
				switch st.op {
				case "seen":
					got, err = s.Seen(ctx, id)
				case "mark":
					got, err = s.Mark(ctx, id)
				case "bad-mark":
					got, err = s.Mark(ctx, "evt bad*")
				}
				if (err != nil) != st.wantError || got != st.want {
					t.Errorf("step %d %s: %v %v", i, st.op, got, err)
				}
			}
			// Concurrent marks of one id: exactly one first.
			id2 := id + "_c"
			var wg sync.WaitGroup
			var mu sync.Mutex
			firsts := 0
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if ok, err := s.Mark(ctx, id2); err == nil && ok {
						mu.Lock()
						firsts++
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if firsts != 1 {
				t.Errorf("concurrent marks: %d firsts", firsts)
			}
		})
	}
	// Redis keys expire after the TTL (SET NX EX).
	s := lifecycle.NewRedisIdempotency(rc, time.Second)
	id := fmt.Sprintf("evt_ttl_%d", time.Now().UnixNano())
	if ok, _ := s.Mark(context.Background(), id); !ok {
		t.Fatal("mark")
	}
	if ttl := rc.TTL(context.Background(), lifecycle.RedisKeyPrefix+id).Val(); ttl <= 0 || ttl > time.Second {
		t.Errorf("redis ttl %v", ttl)
	}
}
