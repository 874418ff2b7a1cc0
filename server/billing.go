package server

import (
	"context"
	"net/http"
	"time"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/controlplane"
	"github.com/kgents/kgents-go/tenancy"
)

// newBilling builds the billing lifecycle (SPEC §4.11) over the control
// plane: its webhook queue, subscription records and idempotency bucket in
// JetStream (Redis for idempotency with REDIS_URL), OpenMeter events through
// the durable publisher. It runs on every replica (the applier is one
// shared durable consumer; the grace sweep is safe on several).
func (s *Server) newBilling(ctx context.Context, cp *controlplane.Service) (*lifecycle.Lifecycle, error) {
	b := s.cfg.Billing
	o := lifecycle.Options{
		Config: lifecycle.Config{
			APIKey: b.APIKey, WebhookSecret: b.WebhookSecret, APIBase: b.APIBase, Grace: b.Grace,
			SuccessURL: b.SuccessURL, CancelURL: b.CancelURL, ReturnURL: b.ReturnURL,
			Prices: map[tenancy.Tier]map[string]string{
				tenancy.TierPro:        {"month": b.PriceProMonthly, "year": b.PriceProYearly},
				tenancy.TierEnterprise: {"month": b.PriceEnterpriseMonthly, "year": b.PriceEnterpriseYearly},
			},
		},
		Tenants: cp, Logger: s.log, Registerer: s.reg, Tracer: s.tracing.Provider,
	}
	if s.nats.Enabled() {
		o.JetStream, o.Replicas, o.Outbox = s.nats.JetStream(), s.cfg.NATS.Replicas, s.pub
	}
	if b.RedisURL != "" {
		rc, err := lifecycle.OpenRedis(ctx, b.RedisURL)
		if err != nil {
			return nil, err
		}
		s.addCloser(func(context.Context) error { return rc.Close() })
		o.Idempotency = lifecycle.NewRedisIdempotency(rc, lifecycle.IdempotencyTTL)
	}
	l, err := lifecycle.New(o)
	if err != nil {
		return nil, err
	}
	if s.nats.Enabled() {
		s.nats.OnConnect(l.Reconnected)
	}
	s.background("stripe-lifecycle", l.Run)
	s.health.stripe = func() HealthPart {
		h := l.Health()
		summary := "disabled"
		if h.Configured || h.WebhookConfigured {
			summary = "ok"
		}
		pub := map[string]any{"status": summary, "configured": h.Configured, "webhook_secret_configured": h.WebhookConfigured,
			"received": h.Received, "applied": h.Applied, "duplicate": h.Duplicate, "ignored": h.Ignored, "failed": h.Failed}
		d := map[string]any{}
		for k, v := range pub {
			d[k] = v
		}
		d["rejected"], d["last_error"], d["last_applied"] = h.Rejected, h.LastError, h.LastApplied
		if h.LastErrorAt != nil {
			d["last_error_at"] = h.LastErrorAt.Format(time.RFC3339)
		}
		return HealthPart{Detail: d, Public: pub, Summary: summary}
	}
	s.billing = l
	return l, nil
}

// mountBilling serves the webhook endpoint (no API key: Stripe signs the
// body) and its health.
func (s *Server) mountBilling(mux *http.ServeMux) {
	if s.billing == nil {
		return
	}
	mux.Handle("/webhooks/stripe", s.routed("/webhooks/stripe", onlyMethods(s.billing.ServeWebhook, http.MethodPost)))
	mux.Handle("/webhooks/stripe/health", s.routed("/webhooks/stripe/health", onlyMethods(s.billing.ServeHealth, http.MethodGet, http.MethodHead)))
}
