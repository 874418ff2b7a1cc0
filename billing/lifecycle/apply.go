package lifecycle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/stripe/stripe-go/v85"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/controlplane"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/tenancy"
)

// The six handled Stripe event types (reference §9).
const (
	typeCheckoutCompleted = "checkout.session.completed"
	typeSubCreated        = "customer.subscription.created"
	typeSubUpdated        = "customer.subscription.updated"
	typeSubDeleted        = "customer.subscription.deleted"
	typeInvoicePaid       = "invoice.paid"
	typeInvoiceFailed     = "invoice.payment_failed"
)

// OpenMeterSource is the CloudEvents source of the subscription and
// payment events (the Python bridge's).
const OpenMeterSource = "kgents-stripe-bridge"

// The OpenMeter event types.
const (
	OMSubscriptionStarted = "subscription.started"
	OMSubscriptionUpdated = "subscription.updated"
	OMSubscriptionEnded   = "subscription.ended"
	OMPaymentSuccess      = "payment.success"
	OMPaymentFailed       = "payment.failed"
)

// Outcomes of applying one event (metric label and health counter).
const (
	outApplied   = "applied"   // handled (the tenant may or may not have changed)
	outDuplicate = "duplicate" // already applied (idempotency store)
	outStale     = "stale"     // older than the last event applied for its subscription: recorded, ignored
	outUnhandled = "unhandled" // a type we do not act on: recorded, ignored
	outNoTenant  = "no_tenant" // no tenant found: recorded, ignored
	outFailed    = "failed"    // an error; retried, given up after MaxApplyAttempts
)

// errPermanent wraps failures a retry cannot fix (a corrupt body).
var errPermanent = errors.New("permanent")

// applyStored is the queue's callback for one stored event.
func (l *Lifecycle) applyStored(ctx context.Context, body []byte, attempt int) error {
	var ev stripe.Event
	if err := json.Unmarshal(body, &ev); err != nil || checkEventID(ev.ID) != nil {
		l.count("other", outFailed)
		l.stats.failed.Add(1)
		l.stats.fail("stored event does not decode")
		return nil // never retried: it will not decode next time either
	}
	typ := string(ev.Type)
	ctx, span := l.tracer.Start(ctx, "stripe.webhook.apply", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("stripe.event_id", ev.ID), attribute.String("stripe.event_type", typ), attribute.Int("stripe.attempt", attempt)))
	defer span.End()
	outcome, err := l.apply(ctx, &ev)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "apply failed")
		l.stats.fail(fmt.Sprintf("event %s (%s), attempt %d: %v", ev.ID, typ, attempt, err))
		if errors.Is(err, errPermanent) || attempt >= MaxApplyAttempts {
			l.count(typ, outFailed)
			l.stats.failed.Add(1)
			l.log.Error("Stripe event given up", "event_id", ev.ID, "type", typ, "attempt", attempt, "error", err)
			return nil
		}
		l.log.Warn("Stripe event not applied; retrying", "event_id", ev.ID, "type", typ, "attempt", attempt, "error", err)
		return err
	}
	span.SetAttributes(attribute.String("stripe.outcome", outcome))
	l.count(typ, outcome)
	switch outcome {
	case outApplied:
		l.stats.applied.Add(1)
		l.stats.mu.Lock()
		l.stats.lastApplied = time.Now().UTC()
		l.stats.mu.Unlock()
	case outDuplicate:
		l.stats.duplicate.Add(1)
	default:
		l.stats.ignored.Add(1)
	}
	return nil
}

func (l *Lifecycle) count(typ, outcome string) {
	l.metrics.webhooks.WithLabelValues(typeLabel(typ), outcome).Inc()
}

// apply runs the state machine for one event: duplicate check, tenant,
// order, tenant change with audit, OpenMeter event, records. Every step is
// idempotent, so an event redelivered after a crash half-way applies once.
func (l *Lifecycle) apply(ctx context.Context, ev *stripe.Event) (string, error) {
	seen, err := l.idem.Seen(ctx, ev.ID)
	if err != nil {
		return "", fmt.Errorf("idempotency store: %w", err)
	}
	if seen {
		return outDuplicate, nil
	}
	var raw json.RawMessage
	if ev.Data != nil {
		raw = ev.Data.Raw
	}
	x, err := l.extract(string(ev.Type), raw)
	if err != nil {
		return "", err
	}
	if x == nil {
		return l.done(ctx, ev, outUnhandled)
	}
	tenantID := l.findTenant(ctx, x)
	if tenantID == "" {
		l.log.Warn("Stripe event for no known tenant; ignored", "event_id", ev.ID, "type", ev.Type, "customer", x.customer, "subscription", x.subID)
		l.stats.fail(fmt.Sprintf("event %s (%s): no tenant for customer %q", ev.ID, ev.Type, x.customer))
		return l.done(ctx, ev, outNoTenant)
	}
	// Order per subscription.
	var rec *SubscriptionRecord
	if x.subID != "" {
		if rec, err = l.subs.Get(ctx, x.subID); err != nil {
			return "", fmt.Errorf("subscriptions store: %w", err)
		}
	}
	stale := rec != nil && ev.Created < rec.LastCreated
	if !stale {
		if err := l.change(ctx, ev, x, tenantID); err != nil {
			return "", err
		}
	}
	if err := l.emit(ctx, ev, x, tenantID); err != nil {
		return "", fmt.Errorf("OpenMeter outbox: %w", err)
	}
	if stale {
		l.log.Info("Stripe event older than the last applied for its subscription; recorded and ignored",
			"event_id", ev.ID, "type", ev.Type, "subscription", x.subID, "created", ev.Created, "last_created", rec.LastCreated)
		return l.done(ctx, ev, outStale)
	}
	if x.subID != "" {
		nr := &SubscriptionRecord{TenantID: tenantID, LastCreated: ev.Created, LastEventID: ev.ID}
		if rec != nil {
			nr.Subscription = rec.Subscription
		}
		nr.Subscription.ID = x.subID
		if x.sub != nil {
			nr.Subscription = *x.sub
		}
		if err := l.subs.Put(ctx, x.subID, nr); err != nil {
			return "", fmt.Errorf("subscriptions store: %w", err)
		}
	}
	return l.done(ctx, ev, outApplied)
}

// done marks the event applied.
func (l *Lifecycle) done(ctx context.Context, ev *stripe.Event, outcome string) (string, error) {
	if _, err := l.idem.Mark(ctx, ev.ID); err != nil {
		return "", fmt.Errorf("idempotency store: %w", err)
	}
	return outcome, nil
}

// extracted is what the state machine needs of an event's object.
type extracted struct {
	typ                   string
	tenantMeta, clientRef string
	customer, subID       string
	status                stripe.SubscriptionStatus
	priceID               string
	sub                   *Subscription // the subscription as the event shows it
	om                    string        // OpenMeter type
	omData                map[string]any
}

func customerID(c *stripe.Customer) string {
	if c == nil {
		return ""
	}
	return c.ID
}

// legacyInvoice reads the subscription of invoices from API versions before
// 2025-03-31 (invoice.subscription; newer ones use parent.subscription_details).
type legacyInvoice struct {
	Subscription *stripe.Subscription `json:"subscription"`
}

func (l *Lifecycle) extract(typ string, raw json.RawMessage) (*extracted, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: event without data.object", errPermanent)
	}
	bad := func(err error) error { return fmt.Errorf("%w: %s object does not decode: %w", errPermanent, typ, err) }
	x := &extracted{typ: typ}
	switch typ {
	case typeCheckoutCompleted:
		var s stripe.CheckoutSession
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, bad(err)
		}
		x.tenantMeta, x.clientRef, x.customer = s.Metadata["tenant_id"], s.ClientReferenceID, customerID(s.Customer)
		if s.Subscription != nil {
			x.subID = s.Subscription.ID
		}
		currency := string(s.Currency)
		if currency == "" {
			currency = "usd"
		}
		x.om = OMSubscriptionStarted
		x.omData = map[string]any{"checkout_session_id": s.ID, "subscription_id": nullable(x.subID), "mode": string(s.Mode),
			"amount_total": float64(s.AmountTotal) / 100, "currency": currency}
	case typeSubCreated, typeSubUpdated, typeSubDeleted:
		var s stripe.Subscription
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, bad(err)
		}
		x.tenantMeta, x.customer, x.subID, x.status = s.Metadata["tenant_id"], customerID(s.Customer), s.ID, s.Status
		sub := &Subscription{ID: s.ID, Status: string(s.Status), CancelAtPeriodEnd: s.CancelAtPeriodEnd}
		var quantity int64 = 1
		if s.Items != nil && len(s.Items.Data) > 0 {
			it := s.Items.Data[0]
			if it.Price != nil {
				x.priceID = it.Price.ID
				if it.Price.Recurring != nil {
					sub.Interval = string(it.Price.Recurring.Interval)
				}
			}
			if it.Quantity > 0 {
				quantity = it.Quantity
			}
			if it.CurrentPeriodEnd > 0 {
				sub.CurrentPeriodEnd = time.Unix(it.CurrentPeriodEnd, 0).UTC()
			}
		}
		sub.PriceID = x.priceID
		if sub.Interval == "" {
			_, sub.Interval = l.tierOfPrice(x.priceID)
		}
		x.sub = sub
		switch typ {
		case typeSubCreated:
			x.om = OMSubscriptionStarted
			x.omData = map[string]any{"subscription_id": s.ID, "status": string(s.Status), "plan_id": nullable(x.priceID), "quantity": quantity, "trial_end": nullableInt(s.TrialEnd)}
		case typeSubUpdated:
			x.om = OMSubscriptionUpdated
			x.omData = map[string]any{"subscription_id": s.ID, "status": string(s.Status), "plan_id": nullable(x.priceID), "quantity": quantity, "cancel_at_period_end": s.CancelAtPeriodEnd}
		default:
			x.om = OMSubscriptionEnded
			x.omData = map[string]any{"subscription_id": s.ID, "canceled_at": nullableInt(s.CanceledAt), "ended_at": nullableInt(s.EndedAt)}
		}
	case typeInvoicePaid, typeInvoiceFailed:
		var in stripe.Invoice
		if err := json.Unmarshal(raw, &in); err != nil {
			return nil, bad(err)
		}
		x.customer = customerID(in.Customer)
		x.tenantMeta = in.Metadata["tenant_id"]
		if in.Parent != nil && in.Parent.SubscriptionDetails != nil {
			if in.Parent.SubscriptionDetails.Subscription != nil {
				x.subID = in.Parent.SubscriptionDetails.Subscription.ID
			}
			if t := in.Parent.SubscriptionDetails.Metadata["tenant_id"]; t != "" {
				x.tenantMeta = t
			}
		}
		if x.subID == "" {
			var li legacyInvoice
			if json.Unmarshal(raw, &li) == nil && li.Subscription != nil {
				x.subID = li.Subscription.ID
			}
		}
		if typ == typeInvoicePaid {
			x.om = OMPaymentSuccess
			x.omData = map[string]any{"invoice_id": in.ID, "subscription_id": nullable(x.subID), "amount_paid": float64(in.AmountPaid) / 100,
				"currency": string(in.Currency), "billing_reason": nullable(string(in.BillingReason))}
		} else {
			x.om = OMPaymentFailed
			x.omData = map[string]any{"invoice_id": in.ID, "subscription_id": nullable(x.subID), "amount_due": float64(in.AmountDue) / 100,
				"currency": string(in.Currency), "attempt_count": in.AttemptCount, "next_payment_attempt": nullableInt(in.NextPaymentAttempt)}
		}
	default:
		return nil, nil
	}
	return x, nil
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullableInt(v int64) any {
	if v == 0 {
		return nil
	}
	return v
}

// findTenant: metadata.tenant_id, else client_reference_id, else the
// stored customer → tenant mapping. A candidate that names no tenant is
// skipped.
func (l *Lifecycle) findTenant(ctx context.Context, x *extracted) string {
	for _, id := range []string{x.tenantMeta, x.clientRef} {
		if id == "" {
			continue
		}
		if t, err := l.tenants.GetTenant(ctx, id); err == nil && !t.ReadOnly {
			return t.ID
		}
	}
	if id, ok := l.tenants.TenantByStripeCustomer(x.customer); ok {
		return id
	}
	return ""
}

// change is the state machine of SPEC §4.11.
func (l *Lifecycle) change(ctx context.Context, ev *stripe.Event, x *extracted, tenantID string) error {
	t, err := l.tenants.GetTenant(ctx, tenantID)
	if err != nil {
		return err
	}
	var p controlplane.BillingPatch
	action := "billing.subscription"
	setIDs := func() {
		if x.customer != "" {
			p.CustomerID = &x.customer
		}
		if x.subID != "" {
			p.SubscriptionID = &x.subID
		}
	}
	// An event of a subscription other than the tenant's current one may
	// not move its tier or status (e.g. the end of a replaced subscription).
	other := x.subID != "" && t.StripeSubscriptionID != "" && t.StripeSubscriptionID != x.subID
	pastDue := func() {
		switch t.Status {
		case controlplane.StatusActive:
			st, grace := controlplane.StatusPastDue, l.now().Add(l.cfg.Grace)
			p.Status, p.GraceUntil = &st, &grace
		case controlplane.StatusPastDue:
			if t.GraceUntil == nil { // keep a running grace; never restart it
				grace := l.now().Add(l.cfg.Grace)
				p.GraceUntil = &grace
			}
		}
		// suspended stays suspended; canceled is an operator's decision.
	}
	switch x.typ {
	case typeCheckoutCompleted:
		action = "billing.checkout"
		setIDs()
	case typeSubCreated, typeSubUpdated:
		switch x.status {
		case stripe.SubscriptionStatusActive, stripe.SubscriptionStatusTrialing:
			tier, _ := l.tierOfPrice(x.priceID)
			if tier == "" {
				l.log.Warn("Stripe subscription with a price not in STRIPE_PRICE_*; tier unchanged", "subscription", x.subID, "price", x.priceID)
			} else {
				p.Tier = &tier
			}
			setIDs()
		case stripe.SubscriptionStatusPastDue:
			if other {
				return nil
			}
			setIDs()
			pastDue()
		case stripe.SubscriptionStatusUnpaid:
			if other {
				return nil
			}
			setIDs()
			if t.Status == controlplane.StatusActive || t.Status == controlplane.StatusPastDue {
				st := controlplane.StatusSuspended
				p.Status = &st
			}
		case stripe.SubscriptionStatusCanceled, stripe.SubscriptionStatusIncompleteExpired:
			if other {
				return nil
			}
			l.ended(&p, t)
		default: // incomplete, paused: nothing changes until it settles
			return nil
		}
	case typeSubDeleted:
		if other {
			return nil
		}
		l.ended(&p, t)
	case typeInvoicePaid:
		if other {
			return nil
		}
		if t.Status == controlplane.StatusPastDue || t.Status == controlplane.StatusSuspended {
			st := controlplane.StatusActive
			p.Status = &st
		}
		p.ClearGrace = true
		if x.customer != "" && t.StripeCustomerID == "" {
			p.CustomerID = &x.customer
		}
	case typeInvoiceFailed:
		if other {
			return nil
		}
		pastDue()
	}
	extra := map[string]controlplane.Change{
		"stripe_event_id":   {Old: nil, New: ev.ID},
		"stripe_event_type": {Old: nil, New: string(ev.Type)},
	}
	_, changed, err := l.tenants.UpdateBilling(ctx, controlplane.SystemActor("stripe"), tenantID, action, p, extra)
	if err != nil {
		return err
	}
	if changed {
		l.log.Info("billing: tenant changed by a Stripe event", "tenant", tenantID, "event_id", ev.ID, "type", ev.Type)
	}
	return nil
}

// ended: back to free and active, grace and subscription cleared.
func (l *Lifecycle) ended(p *controlplane.BillingPatch, t *controlplane.Tenant) {
	free, active := tenancy.TierFree, controlplane.StatusActive
	p.Tier, p.ClearGrace = &free, true
	if t.Status != controlplane.StatusCanceled {
		p.Status = &active
	}
	none := ""
	p.SubscriptionID = &none
}

// OpenMeterEventID derives the CloudEvent id from the Stripe event id, so
// a redelivered webhook is never billed twice.
func OpenMeterEventID(stripeEventID, omType string) string {
	h := sha256.Sum256([]byte("stripe\x00" + stripeEventID + "\x00" + omType))
	return hex.EncodeToString(h[:16])
}

// emit publishes the event's OpenMeter CloudEvent (subject = the tenant)
// through the durable outbox and waits until it is stored.
func (l *Lifecycle) emit(ctx context.Context, ev *stripe.Event, x *extracted, tenantID string) error {
	if l.outbox == nil || x.om == "" {
		return nil
	}
	data := map[string]any{"stripe_event_id": ev.ID}
	for k, v := range x.omData {
		data[k] = v
	}
	ce := event.New(event.CloudEventsVersionV1)
	ce.SetID(OpenMeterEventID(ev.ID, x.om))
	ce.SetSource(OpenMeterSource)
	ce.SetType(x.om)
	ce.SetSubject(tenantID)
	ce.SetTime(time.Unix(ev.Created, 0).UTC())
	if err := ce.SetData(event.ApplicationJSON, data); err != nil {
		return err
	}
	b, err := billing.Marshal(ce)
	if err != nil {
		return err
	}
	return l.outbox.PublishDurable(ctx, streaming.Message{Subject: billing.EventSubject(x.om), Data: b, MsgID: ce.ID()})
}
