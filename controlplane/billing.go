package controlplane

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/kgents/kgents-go/tenancy"
)

// The billing lifecycle (SPEC §4.11, package billing/lifecycle) changes a
// tenant's tier, status, Stripe ids and grace through UpdateBilling, as a
// system actor ("stripe" for webhooks, "system" for the grace sweep), with
// an audit entry like every other change; the watch-fed caches of every
// replica apply it within 2 s.

// BillingPatch is what the billing lifecycle may change on a tenant. Nil
// fields are kept.
type BillingPatch struct {
	Tier                       *tenancy.Tier
	Status                     *Status
	CustomerID, SubscriptionID *string
	// GraceUntil sets the grace end; ClearGrace removes it (wins over GraceUntil).
	GraceUntil *time.Time
	ClearGrace bool
	// Only, when set, is checked against the tenant as stored right before
	// each write attempt: false writes nothing (UpdateBilling reports no
	// change). The grace sweep uses it so a tenant paid meanwhile is left alone.
	Only func(*Tenant) bool
}

// UpdateBilling applies p to tenant id and appends one audit entry (action,
// e.g. "billing.subscription", with the changed fields and extra) when
// something changed. The write is a compare-and-set retried on a
// concurrent change, so several replicas (webhook applier, sweeps) may call
// it at once. It reports whether the tenant changed.
func (s *Service) UpdateBilling(ctx context.Context, a Actor, id, action string, p BillingPatch, extra map[string]Change) (*Tenant, bool, error) {
	if !a.system {
		return nil, false, fmt.Errorf("%w: billing changes are made by the billing lifecycle only", ErrForbidden)
	}
	if _, err := uuid.Parse(id); err != nil {
		return nil, false, invalid("id", "not a UUID")
	}
	if p.Tier != nil {
		if _, err := checkTier(*p.Tier); err != nil {
			return nil, false, err
		}
	}
	if p.Status != nil {
		if _, err := ParseStatus(string(*p.Status)); err != nil {
			return nil, false, invalid("status", "unknown status %q", string(*p.Status))
		}
	}
	if err := s.writable(); err != nil {
		return nil, false, err
	}
	for attempt := 0; ; attempt++ {
		old, rev, err := s.loadTenant(ctx, id)
		if err != nil {
			return nil, false, err
		}
		if p.Only != nil && !p.Only(old.tenant()) {
			return old.tenant(), false, nil
		}
		r := *old
		d := map[string]Change{}
		if p.Tier != nil && *p.Tier != r.Tier {
			d["tier"] = Change{string(r.Tier), string(*p.Tier)}
			r.Tier = *p.Tier
		}
		if p.Status != nil && *p.Status != r.Status {
			d["status"] = Change{string(r.Status), string(*p.Status)}
			r.Status = *p.Status
		}
		if p.CustomerID != nil && *p.CustomerID != r.StripeCustomerID {
			d["stripe_customer_id"] = Change{r.StripeCustomerID, *p.CustomerID}
			r.StripeCustomerID = *p.CustomerID
		}
		if p.SubscriptionID != nil && *p.SubscriptionID != r.StripeSubscriptionID {
			d["stripe_subscription_id"] = Change{r.StripeSubscriptionID, *p.SubscriptionID}
			r.StripeSubscriptionID = *p.SubscriptionID
		}
		switch {
		case p.ClearGrace && r.GraceUntil != nil:
			d["grace_until"] = Change{timeOrNil(r.GraceUntil), nil}
			r.GraceUntil = nil
		case !p.ClearGrace && p.GraceUntil != nil && (r.GraceUntil == nil || !r.GraceUntil.Equal(*p.GraceUntil)):
			d["grace_until"] = Change{timeOrNil(r.GraceUntil), p.GraceUntil.UTC().Format(time.RFC3339)}
			r.GraceUntil = ptr(p.GraceUntil.UTC())
		}
		if len(d) == 0 {
			return old.tenant(), false, nil
		}
		for k, v := range extra {
			if _, taken := d[k]; !taken {
				d[k] = v
			}
		}
		r.UpdatedAt = s.now()
		e := s.entry(a, id, action, d)
		r.AuditID = e.ID
		if err := s.audited(ctx, e, func() error { _, err := s.putTenant(ctx, &r, rev); return err }); err != nil {
			if errors.Is(err, ErrUnavailable) && ctx.Err() == nil && attempt < 5 && s.changedSince(ctx, id, rev) {
				continue // lost a race with another writer (its entry says aborted): re-read and re-apply
			}
			return nil, false, err
		}
		return r.tenant(), true, nil
	}
}

// changedSince reports whether tenant id is stored at a revision other than rev.
func (s *Service) changedSince(ctx context.Context, id string, rev uint64) bool {
	e, err := s.tenants.Get(ctx, id)
	return err == nil && e.rev != rev
}

// TenantByStripeCustomer finds the managed tenant that records Stripe
// customer id (the stored customer → tenant mapping), from the cache.
func (s *Service) TenantByStripeCustomer(customerID string) (string, bool) {
	if customerID == "" {
		return "", false
	}
	for id, t := range s.cache.snap.Load().tenants {
		if t.rec.StripeCustomerID == customerID {
			return id, true
		}
	}
	return "", false
}

// SuspendExpiredGrace moves every past_due tenant whose grace ended before
// now to suspended (actor "system", action billing.grace_expired). Safe on
// several replicas at once: each write re-checks the stored tenant, so a
// tenant is suspended once and one paid meanwhile is left alone. It returns
// the tenants it suspended.
func (s *Service) SuspendExpiredGrace(ctx context.Context, now time.Time) ([]string, error) {
	var due []string
	for id, t := range s.cache.snap.Load().tenants {
		if expired(t.rec.tenant(), now) {
			due = append(due, id)
		}
	}
	var done []string
	var errs []error
	suspended := StatusSuspended
	for _, id := range due {
		_, changed, err := s.UpdateBilling(ctx, SystemActor("system"), id, "billing.grace_expired",
			BillingPatch{Status: &suspended, Only: func(t *Tenant) bool { return expired(t, now) }}, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("tenant %s: %w", id, err))
			continue
		}
		if changed {
			done = append(done, id)
		}
	}
	return done, errors.Join(errs...)
}

func expired(t *Tenant, now time.Time) bool {
	return t.Status == StatusPastDue && t.GraceUntil != nil && !now.Before(*t.GraceUntil)
}

// RecordCheckout appends the billing.checkout audit entry of a Checkout
// Session a tenant's key started. Nothing of the tenant changes until
// Stripe confirms the checkout (the webhook's own entry, actor stripe).
func (s *Service) RecordCheckout(ctx context.Context, a Actor, tenantID, sessionID, tier, interval string) error {
	return s.audit.Append(ctx, s.entry(a, tenantID, "billing.checkout", map[string]Change{
		"checkout_session": {New: sessionID}, "tier": {New: tier}, "interval": {New: interval},
	}))
}
