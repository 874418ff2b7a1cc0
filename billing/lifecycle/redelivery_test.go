package lifecycle_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/billing/lifecycle/lifecycletest"
	"github.com/kgents/kgents-go/controlplane"
	"github.com/kgents/kgents-go/streaming/natstest"
)

// sendAt posts e signed at ts and returns the Stripe-Signature it used.
func sendAt(t *testing.T, l *lifecycle.Lifecycle, e evt, ts time.Time) string {
	t.Helper()
	b := e.body()
	sig := lifecycletest.Sign(b, secret, ts)
	code, out := send(t, l.ServeWebhook, b, sig)
	if code != 200 || out["status"] != "received" || out["event_id"] != e.id {
		t.Fatalf("%s: %d %v", e.id, code, out)
	}
	return sig
}

// storedCopies is how many messages the webhook stream holds on subject.
func storedCopies(t *testing.T, js jetstream.JetStream, subject string) uint64 {
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
	return info.State.Subjects[subject]
}

// TestRedeliveryIsCaughtByTheIdempotencyStore drives one table through
// both shared stores (JetStream KV, the default; Redis with REDIS_URL). A
// copy of one delivery is dropped by the stream's Nats-Msg-Id window; a
// redelivery Stripe signs anew (its retries, a resend from the dashboard)
// is stored and reaches the applier, where only the idempotency store stops
// it: it is counted duplicate, changes nothing and bills nothing. With its
// key removed from the store, the next redelivery applies again — the store,
// not anything before it, is what caught the first.
func TestRedeliveryIsCaughtByTheIdempotencyStore(t *testing.T) {
	rc, _ := lifecycletest.RedisClient(t)
	for _, tc := range []struct {
		name string
		// store is the Idempotency option (nil: the default, JetStream KV).
		store func() lifecycle.Idempotency
		// marked reports whether id is in the store; forget removes it.
		marked func(ctx context.Context, js jetstream.JetStream, id string) (bool, error)
		forget func(ctx context.Context, js jetstream.JetStream, id string) error
	}{
		{
			name: "jetstream-kv",
			marked: func(ctx context.Context, js jetstream.JetStream, id string) (bool, error) {
				kv, err := js.KeyValue(ctx, lifecycle.SeenBucket)
				if err != nil {
					return false, err
				}
				_, err = kv.Get(ctx, id)
				if errors.Is(err, jetstream.ErrKeyNotFound) {
					return false, nil
				}
				return err == nil, err
			},
			forget: func(ctx context.Context, js jetstream.JetStream, id string) error {
				kv, err := js.KeyValue(ctx, lifecycle.SeenBucket)
				if err != nil {
					return err
				}
				return kv.Delete(ctx, id)
			},
		},
		{
			name:  "redis",
			store: func() lifecycle.Idempotency { return lifecycle.NewRedisIdempotency(rc, lifecycle.IdempotencyTTL) },
			marked: func(ctx context.Context, _ jetstream.JetStream, id string) (bool, error) {
				n, err := rc.Exists(ctx, lifecycle.RedisKeyPrefix+id).Result()
				return n == 1, err
			},
			forget: func(ctx context.Context, _ jetstream.JetStream, id string) error {
				return rc.Del(ctx, lifecycle.RedisKeyPrefix+id).Err()
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := natstest.Start(t)
			_, js := srv.Connect(t)
			ob := &outbox{}
			var store lifecycle.Idempotency
			if tc.store != nil {
				store = tc.store()
			}
			r := startReplica(t, srv, time.Hour, ob, store)
			ctx := context.Background()
			tn := newTenant(t, r.cp)
			// Ids of this run only: the Redis may be shared.
			run := fmt.Sprintf("%s_%d", tc.name[:5], time.Now().UnixNano())
			sub, cus := "sub_"+run, "cus_"+run
			now := time.Now()

			sendAt(t, r.l, evt{id: "evt_co_" + run, typ: "checkout.session.completed", created: now.Unix(), object: map[string]any{
				"id": "cs_" + run, "object": "checkout.session", "mode": "subscription", "client_reference_id": tn.ID, "customer": cus, "subscription": sub,
			}}, now.Add(-30*time.Second))
			failed := evt{id: "evt_pf_" + run, typ: "invoice.payment_failed", created: now.Unix() + 1, object: invoice("in_"+run, sub, cus)}
			first := now.Add(-20 * time.Second)
			sig := sendAt(t, r.l, failed, first)
			waitFor(t, "both events applied", func() bool { return r.l.Health().Applied == 2 })
			pastDue, err := r.cp.GetTenant(ctx, tn.ID)
			if err != nil || pastDue.Status != controlplane.StatusPastDue || pastDue.GraceUntil == nil {
				t.Fatalf("payment failed: %+v %v", pastDue, err)
			}
			if ok, err := tc.marked(ctx, js, failed.id); err != nil || !ok {
				t.Fatalf("applied event not in the %s store: %v %v", tc.name, ok, err)
			}
			const subject = lifecycle.EventsSubjectPrefix + "invoice.payment_failed"

			// A copy of the same delivery (same signature): dropped by the
			// stream, counted duplicate at once.
			body := failed.body()
			if code, out := send(t, r.l.ServeWebhook, body, sig); code != 200 || out["status"] != "received" {
				t.Fatalf("copy of a delivery: %d %v", code, out)
			}
			if n := storedCopies(t, js, subject); n != 1 {
				t.Errorf("copy of one delivery: %d messages stored, want 1", n)
			}
			if h := r.l.Health(); h.Duplicate != 1 || h.Received != 3 {
				t.Errorf("after the copy: %+v", h)
			}

			// Stripe redelivers (signed anew): stored, and stopped by the store.
			sendAt(t, r.l, failed, first.Add(10*time.Second))
			if n := storedCopies(t, js, subject); n != 2 {
				t.Fatalf("redelivery: %d messages stored, want 2 (it must reach the applier)", n)
			}
			waitFor(t, "the redelivery counted duplicate by the applier", func() bool { return r.l.Health().Duplicate == 2 })
			if h := r.l.Health(); h.Applied != 2 || h.Failed != 0 {
				t.Errorf("redelivery applied again: %+v", h)
			}
			if n := ob.published(failed.id, lifecycle.OMPaymentFailed); n != 1 {
				t.Errorf("payment.failed handed to the outbox %d times, want 1", n)
			}
			if got, _ := r.cp.GetTenant(ctx, tn.ID); got.UpdatedAt != pastDue.UpdatedAt {
				t.Errorf("redelivery changed the tenant: %+v", got)
			}

			// Without its key, the store no longer stops it: the next
			// redelivery applies (and is handed to the outbox) again.
			if err := tc.forget(ctx, js, failed.id); err != nil {
				t.Fatal(err)
			}
			sendAt(t, r.l, failed, first.Add(15*time.Second))
			waitFor(t, "the redelivery applied once the key is gone", func() bool { return r.l.Health().Applied == 3 })
			if n := ob.published(failed.id, lifecycle.OMPaymentFailed); n != 2 {
				t.Errorf("without the key: payment.failed handed to the outbox %d times, want 2", n)
			}
			if ok, err := tc.marked(ctx, js, failed.id); err != nil || !ok {
				t.Errorf("re-applied event not marked again: %v %v", ok, err)
			}
		})
	}
}

// TestWebhookWhileNATSIsDownIsNotStored: with the stream already in use
// and NATS gone, a verified webhook is answered 503 at once and is not
// stored later either (it is not left in the client's reconnect buffer,
// from which it would reach the stream after Stripe was told it did not).
// No applier runs here, so nothing else notices the outage first.
func TestWebhookWhileNATSIsDownIsNotStored(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	nc, js := srv.Connect(t)
	cp := controlplane.NewMemory(controlplane.Options{Logger: quiet()})
	l := newLifecycle(t, lifecycle.Options{Tenants: cp, JetStream: js})
	now := time.Now()
	sendAt(t, l, evt{id: "evt_down_first", typ: "customer.created", created: now.Unix(), object: map[string]any{"id": "cus_x", "object": "customer"}}, now)

	srv.Stop()
	waitFor(t, "the client to notice", func() bool { return !nc.IsConnected() })
	failed := evt{id: "evt_down_pf", typ: "invoice.payment_failed", created: now.Unix(), object: invoice("in_down", "sub_down", "cus_down")}
	b := failed.body()
	start := time.Now()
	code, out := send(t, l.ServeWebhook, b, lifecycletest.Sign(b, secret, now))
	if took := time.Since(start); code != 503 || out["code"] != "unavailable" || took > 2*time.Second {
		t.Fatalf("webhook with NATS down: %d %v after %v, want 503 at once", code, out, took)
	}
	srv.Restart()
	waitFor(t, "the client to reconnect", func() bool { return nc.IsConnected() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := storedCopies(t, js, lifecycle.EventsSubjectPrefix+"invoice.payment_failed"); n != 0 {
		t.Errorf("the webhook answered 503 was stored after the reconnect (%d)", n)
	}
	if h := l.Health(); h.Received != 1 || h.LastError == nil {
		t.Errorf("health: %+v", h)
	}
}
