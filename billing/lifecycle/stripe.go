// Package lifecycle is the billing lifecycle of SPEC §4.11: Stripe Checkout
// and Customer Portal sessions through the official stripe-go SDK, verified
// webhooks stored in JetStream before they are acknowledged and applied by
// one durable consumer shared by every replica, the tenant state machine
// (tier from the price, past_due with a grace, suspended after it, active
// when paid, free when the subscription ends) written through the control
// plane with audit entries, and the subscription/payment events for
// OpenMeter through the durable metering outbox.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/stripe/stripe-go/v85"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kgents/kgents-go/controlplane"
	"github.com/kgents/kgents-go/tenancy"
)

// Config is the lifecycle's part of the configuration (config.Billing).
type Config struct {
	APIKey, WebhookSecret, APIBase string
	// Prices: tier → interval ("month", "year") → Stripe price id.
	Prices                           map[tenancy.Tier]map[string]string
	Grace                            time.Duration
	SuccessURL, CancelURL, ReturnURL string
}

// Errors of the API calls (mapped by server/billingsvc).
var (
	// ErrNotConfigured: STRIPE_API_KEY is not set (501).
	ErrNotConfigured = errors.New("billing is not configured: set STRIPE_API_KEY (and the STRIPE_PRICE_* variables)")
	// ErrNoCustomer: the tenant has no Stripe customer yet (409).
	ErrNoCustomer = errors.New("the tenant has no billing account yet: complete a checkout first (POST /v1/billing/checkout)")
	// ErrNoPrice: no price configured for the tier and interval (400).
	ErrNoPrice = errors.New("no price is configured for this tier and interval")
	// ErrReadOnly: a key-file or dev tenant cannot be billed (409).
	ErrReadOnly = errors.New("this tenant is managed in KGENTS_API_KEYS_FILE or is a dev tenant: it cannot be billed")
	// ErrProviderRejected: Stripe refused the request (400); details are logged, not shown.
	ErrProviderRejected = errors.New("the payment provider refused the request; check the billing settings or contact support")
	// ErrProviderUnavailable: Stripe could not be reached or failed (503).
	ErrProviderUnavailable = errors.New("the payment provider is unavailable; retry shortly")
)

// Tenants is what the lifecycle needs of the control plane
// (*controlplane.Service).
type Tenants interface {
	GetTenant(ctx context.Context, id string) (*controlplane.Tenant, error)
	UpdateBilling(ctx context.Context, a controlplane.Actor, id, action string, p controlplane.BillingPatch, extra map[string]controlplane.Change) (*controlplane.Tenant, bool, error)
	TenantByStripeCustomer(customerID string) (string, bool)
	SuspendExpiredGrace(ctx context.Context, now time.Time) ([]string, error)
}

// newStripeClient builds the stripe-go client for cfg (STRIPE_API_BASE
// points it at stripe-mock or any Stripe-compatible endpoint).
func newStripeClient(cfg Config, log *slog.Logger) *stripe.Client {
	bc := &stripe.BackendConfig{
		HTTPClient:        &http.Client{Timeout: 20 * time.Second},
		MaxNetworkRetries: stripe.Int64(2),
		LeveledLogger:     &stripe.LeveledLogger{Level: stripe.LevelNull},
		EnableTelemetry:   stripe.Bool(false),
	}
	if cfg.APIBase != "" {
		bc.URL = stripe.String(cfg.APIBase)
	}
	_ = log
	return stripe.NewClient(cfg.APIKey, stripe.WithBackends(stripe.NewBackendsWithConfig(bc)))
}

// tierOfPrice is the tier a price id sells ("" unknown).
func (l *Lifecycle) tierOfPrice(price string) (tenancy.Tier, string) {
	for tier, byInterval := range l.cfg.Prices {
		for interval, p := range byInterval {
			if p != "" && p == price {
				return tier, interval
			}
		}
	}
	return "", ""
}

// stripeCall runs one Stripe API call in a client span and maps its error.
func (l *Lifecycle) stripeCall(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	ctx, span := l.tracer.Start(ctx, "stripe."+name, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("rpc.system", "stripe"), attribute.String("rpc.method", name)))
	defer span.End()
	start := time.Now()
	err := fn(ctx)
	l.metrics.calls.WithLabelValues(name, outcomeOf(err)).Inc()
	l.metrics.callLatency.WithLabelValues(name).Observe(time.Since(start).Seconds())
	if err == nil {
		return nil
	}
	span.RecordError(err)
	span.SetStatus(codes.Error, "stripe call failed")
	var se *stripe.Error
	if errors.As(err, &se) {
		span.SetAttributes(attribute.Int("http.response.status_code", se.HTTPStatusCode), attribute.String("stripe.error_type", string(se.Type)))
		l.log.Warn("Stripe call failed", "call", name, "status", se.HTTPStatusCode, "type", se.Type, "code", se.Code, "request_id", se.RequestID, "message", se.Msg)
		switch {
		case se.HTTPStatusCode == http.StatusTooManyRequests || se.HTTPStatusCode >= 500 || se.HTTPStatusCode == 0:
			return ErrProviderUnavailable
		case se.HTTPStatusCode == http.StatusUnauthorized || se.HTTPStatusCode == http.StatusForbidden:
			// Our key, not the caller's fault: the service is misconfigured.
			return ErrProviderUnavailable
		default:
			return ErrProviderRejected
		}
	}
	l.log.Warn("Stripe call failed", "call", name, "error", err)
	return ErrProviderUnavailable
}

func outcomeOf(err error) string {
	if err == nil {
		return "ok"
	}
	return "error"
}

// CheckoutRequest asks for a Checkout Session.
type CheckoutRequest struct {
	TenantID              string
	Tier                  tenancy.Tier // pro | enterprise
	Interval              string       // month (default) | year
	SuccessURL, CancelURL string       // "" = the configured defaults
}

// Checkout creates a subscription-mode Checkout Session for the tier's
// price, carrying the tenant id as client_reference_id and in the
// subscription's metadata, reusing the tenant's customer when it has one.
func (l *Lifecycle) Checkout(ctx context.Context, req CheckoutRequest) (url, sessionID string, err error) {
	if l.client == nil {
		return "", "", ErrNotConfigured
	}
	if req.Interval == "" {
		req.Interval = "month"
	}
	price := l.cfg.Prices[req.Tier][req.Interval]
	if price == "" {
		return "", "", fmt.Errorf("%w: %s/%s", ErrNoPrice, req.Tier, req.Interval)
	}
	t, err := l.tenants.GetTenant(ctx, req.TenantID)
	if err != nil {
		return "", "", err
	}
	if t.ReadOnly {
		return "", "", ErrReadOnly
	}
	p := &stripe.CheckoutSessionCreateParams{
		Mode:              stripe.String(string(stripe.CheckoutSessionModeSubscription)),
		ClientReferenceID: stripe.String(t.ID),
		LineItems:         []*stripe.CheckoutSessionCreateLineItemParams{{Price: stripe.String(price), Quantity: stripe.Int64(1)}},
		SubscriptionData: &stripe.CheckoutSessionCreateSubscriptionDataParams{
			Metadata: map[string]string{"tenant_id": t.ID},
		},
		SuccessURL: stripe.String(or(req.SuccessURL, l.cfg.SuccessURL)),
		CancelURL:  stripe.String(or(req.CancelURL, l.cfg.CancelURL)),
	}
	p.AddMetadata("tenant_id", t.ID)
	if t.StripeCustomerID != "" {
		p.Customer = stripe.String(t.StripeCustomerID)
	} else if t.Email != "" {
		p.CustomerEmail = stripe.String(t.Email)
	}
	var s *stripe.CheckoutSession
	if err := l.stripeCall(ctx, "checkout.sessions.create", func(ctx context.Context) error {
		var err error
		s, err = l.client.V1CheckoutSessions.Create(ctx, p)
		return err
	}); err != nil {
		return "", "", err
	}
	return s.URL, s.ID, nil
}

// Portal creates a Customer Portal session for the tenant's customer.
func (l *Lifecycle) Portal(ctx context.Context, tenantID, returnURL string) (string, error) {
	if l.client == nil {
		return "", ErrNotConfigured
	}
	t, err := l.tenants.GetTenant(ctx, tenantID)
	if err != nil {
		return "", err
	}
	if t.StripeCustomerID == "" {
		return "", ErrNoCustomer
	}
	p := &stripe.BillingPortalSessionCreateParams{
		Customer:  stripe.String(t.StripeCustomerID),
		ReturnURL: stripe.String(or(returnURL, l.cfg.ReturnURL)),
	}
	var s *stripe.BillingPortalSession
	if err := l.stripeCall(ctx, "billing_portal.sessions.create", func(ctx context.Context) error {
		var err error
		s, err = l.client.V1BillingPortalSessions.Create(ctx, p)
		return err
	}); err != nil {
		return "", err
	}
	return s.URL, nil
}

// Subscription is what GET /v1/billing shows of the tenant's subscription,
// as the last applied webhook left it.
type Subscription struct {
	ID                string    `json:"id"`
	Status            string    `json:"status"`
	PriceID           string    `json:"price_id"`
	Interval          string    `json:"interval"`
	CurrentPeriodEnd  time.Time `json:"current_period_end"`
	CancelAtPeriodEnd bool      `json:"cancel_at_period_end"`
}

// State is GET /v1/billing.
type State struct {
	Tier         tenancy.Tier
	Status       controlplane.Status
	CustomerID   string
	Subscription *Subscription // nil: none
	GraceUntil   *time.Time
}

// Get returns the tenant's billing state. It works with billing off too
// (tier and status), so a tenant can always see where it stands.
func (l *Lifecycle) Get(ctx context.Context, tenantID string) (*State, error) {
	t, err := l.tenants.GetTenant(ctx, tenantID)
	if err != nil {
		return nil, err
	}
	st := &State{Tier: t.Tier, Status: t.Status, CustomerID: t.StripeCustomerID, GraceUntil: t.GraceUntil}
	if t.StripeSubscriptionID != "" && l.subs != nil {
		rec, err := l.subs.Get(ctx, t.StripeSubscriptionID)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", controlplane.ErrUnavailable, err)
		}
		if rec != nil {
			s := rec.Subscription
			st.Subscription = &s
		} else {
			st.Subscription = &Subscription{ID: t.StripeSubscriptionID}
		}
	}
	return st, nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
