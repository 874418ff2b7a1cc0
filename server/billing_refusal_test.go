package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/billing/lifecycle/lifecycletest"
	"github.com/kgents/kgents-go/server/servertest"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// streamState is the webhook stream's message count in all and on subject.
func streamState(t *testing.T, js jetstream.JetStream, subject string) (all, onSubject uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, lifecycle.EventsStream)
	if err != nil {
		t.Fatalf("stream %s: %v", lifecycle.EventsStream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs, info.State.Subjects[subject]
}

// rawWebhook posts body with the given Stripe-Signature ("" none) and
// returns the status, Retry-After and decoded body.
func rawWebhook(t *testing.T, base string, body []byte, sig string) (int, string, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/webhooks/stripe", bytes.NewReader(body))
	if sig != "" {
		req.Header.Set("Stripe-Signature", sig)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, resp.Header.Get("Retry-After"), out
}

// TestWebhookRefusalsStoreNothing runs kgentsd on a NATS the test can
// inspect and stop. Webhooks with a stale, forged, missing, malformed
// signature or a body altered after signing are 400 and leave nothing in
// the JetStream stream. With NATS down a verified webhook is 503 with
// Retry-After, is not stored and never applies (not even once NATS is
// back); Stripe's retry then applies it.
func TestWebhookRefusalsStoreNothing(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	_, js := nats.Connect(t)
	in := servertest.Start(t, map[string]string{"NATS_SERVERS": nats.URL(), "STRIPE_WEBHOOK_SECRET": testWebhookSecret,
		"STRIPE_PRICE_PRO_MONTHLY": "price_pro_month", "KGENTS_SIGNUP": "open"})
	tenantID, _ := signUp(t, in, "refusals@example.com")
	run := fmt.Sprint(time.Now().UnixNano())
	sub, cus := "sub_ref"+run, "cus_ref"+run
	now := time.Now().Unix()
	signedOK := func(body []byte) string { return lifecycletest.Sign(body, testWebhookSecret, time.Time{}) }
	health := func() webhookHealth { return stripeHealth(t, in) }

	co := stripeEvent("evt_ref_co"+run, "checkout.session.completed", now, map[string]any{"id": "cs_ref", "object": "checkout.session",
		"mode": "subscription", "client_reference_id": tenantID, "customer": cus, "subscription": sub})
	if code, _, out := rawWebhook(t, in.URL, co, signedOK(co)); code != http.StatusOK {
		t.Fatalf("checkout webhook: %d %v", code, out)
	}
	eventually(t, 5*time.Second, "the checkout applied", func() error {
		if h := health(); h.Applied != 1 {
			return fmt.Errorf("%+v", h)
		}
		return nil
	})
	const failedSubject = lifecycle.EventsSubjectPrefix + "invoice.payment_failed"
	all, _ := streamState(t, js, failedSubject)
	if all != 1 {
		t.Fatalf("stream holds %d messages after one webhook, want 1", all)
	}

	failed := stripeEvent("evt_ref_pf"+run, "invoice.payment_failed", now+1, invoiceObject("in_ref", sub, cus, tenantID))
	tampered := bytes.Replace(failed, []byte(`"amount_due":2900`), []byte(`"amount_due":1`), 1)
	if bytes.Equal(tampered, failed) {
		t.Fatal("tampering changed nothing")
	}
	for _, tc := range []struct {
		name, sig string
		body      []byte
	}{
		{"stale (signed 6 min ago)", lifecycletest.Sign(failed, testWebhookSecret, time.Now().Add(-6*time.Minute)), failed},
		{"forged (another secret)", lifecycletest.Sign(failed, "whsec_someone_else", time.Time{}), failed},
		{"missing", "", failed},
		{"malformed", "t=now,v1=zz", failed},
		{"body altered after signing", signedOK(failed), tampered},
	} {
		code, _, out := rawWebhook(t, in.URL, tc.body, tc.sig)
		if code != http.StatusBadRequest || out["code"] != "invalid_webhook" || out["detail"] == "" {
			t.Errorf("%s: %d %v, want 400 invalid_webhook", tc.name, code, out)
		}
	}
	if all, onSubject := streamState(t, js, failedSubject); all != 1 || onSubject != 0 {
		t.Errorf("after the refusals the stream holds %d messages (%d of invoice.payment_failed), want 1 (0)", all, onSubject)
	}
	if h := health(); h.Received != 1 || h.Rejected != 5 {
		t.Errorf("health after the refusals: %+v", h)
	}

	// NATS goes away. Probe with harmless events (an unknown type, ignored
	// if stored) until kgentsd refuses them, so the one that matters is
	// sent while it knows NATS is down.
	nats.Stop()
	eventually(t, 10*time.Second, "503 while NATS is down", func() error {
		probe := stripeEvent(fmt.Sprintf("evt_ref_probe%d", time.Now().UnixNano()), "customer.created", now, map[string]any{"id": "cus_probe", "object": "customer"})
		if code, _, out := rawWebhook(t, in.URL, probe, signedOK(probe)); code != http.StatusServiceUnavailable {
			return fmt.Errorf("%d %v", code, out)
		}
		return nil
	})
	start := time.Now()
	code, retryAfter, out := rawWebhook(t, in.URL, failed, signedOK(failed))
	took := time.Since(start)
	if code != http.StatusServiceUnavailable || retryAfter == "" || out["code"] != "unavailable" {
		t.Fatalf("verified webhook with NATS down: %d Retry-After %q %v, want 503 with Retry-After", code, retryAfter, out)
	}
	if d, _ := out["detail"].(string); !strings.Contains(d, "not stored") || strings.Contains(strings.ToLower(d), "nats") {
		t.Errorf("503 detail %q: should say it was not stored, and nothing internal", d)
	}
	t.Logf("503 after %v", took.Round(time.Millisecond))

	// NATS is back: wait until a webhook is taken again, then for a
	// sentinel applied after it. Events apply in stream order, so had the
	// refused one been stored (say, from the reconnect buffer) it would
	// have applied first.
	nats.Restart()
	eventually(t, 20*time.Second, "webhooks stored again", func() error {
		probe := stripeEvent(fmt.Sprintf("evt_ref_probe%d", time.Now().UnixNano()), "customer.created", now, map[string]any{"id": "cus_probe", "object": "customer"})
		if code, _, out := rawWebhook(t, in.URL, probe, signedOK(probe)); code != http.StatusOK {
			return fmt.Errorf("%d %v", code, out)
		}
		return nil
	})
	// Created before the refused event, so that event, retried later, is not stale.
	sentinel := stripeEvent("evt_ref_sc"+run, "customer.subscription.created", now, subscriptionObject(sub, tenantID, cus, "active", now))
	if code, _, out := rawWebhook(t, in.URL, sentinel, signedOK(sentinel)); code != http.StatusOK {
		t.Fatalf("sentinel: %d %v", code, out)
	}
	eventually(t, 20*time.Second, "the sentinel applied", func() error {
		if st := tenantOn(t, in, tenantID); st.Tier != "pro" {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	if st := tenantOn(t, in, tenantID); st.Status != "active" || st.GraceUntil != nil {
		t.Errorf("the webhook answered 503 was applied: %+v", st)
	}
	if _, onSubject := streamState(t, js, failedSubject); onSubject != 0 {
		t.Errorf("the webhook answered 503 is in the stream (%d)", onSubject)
	}

	// Stripe retries it (signed anew): stored and applied.
	if code, _, out := rawWebhook(t, in.URL, failed, lifecycletest.Sign(failed, testWebhookSecret, time.Now().Add(time.Second))); code != http.StatusOK {
		t.Fatalf("Stripe's retry: %d %v", code, out)
	}
	eventually(t, 10*time.Second, "the retry applied", func() error {
		if st := tenantOn(t, in, tenantID); st.Status != "past_due" || st.GraceUntil == nil {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	if _, onSubject := streamState(t, js, failedSubject); onSubject != 1 {
		t.Errorf("Stripe's retry: %d copies stored, want 1", onSubject)
	}
}
