// Package billingsvc is the caller's tenant's billing over gRPC
// (kgents.billing.v1, SPEC §4.11): Stripe Checkout and Customer Portal
// sessions and the billing state, through billing/lifecycle. It is thin:
// requests are validated by protovalidate and scopes enforced by the policy
// table (server/methods.go) before a handler runs; the handlers act on the
// caller's own tenant only and map the lifecycle's errors to status codes
// that never carry Stripe's own text (the lifecycle logs it).
package billingsvc

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/controlplane"
	billingv1 "github.com/kgents/kgents-go/gen/kgents/billing/v1"
	"github.com/kgents/kgents-go/interceptors/statuserr"
	"github.com/kgents/kgents-go/server/tenantsvc"
)

// Billing is what the service needs of the lifecycle (*lifecycle.Lifecycle).
type Billing interface {
	Checkout(ctx context.Context, req lifecycle.CheckoutRequest) (url, sessionID string, err error)
	Portal(ctx context.Context, tenantID, returnURL string) (string, error)
	Get(ctx context.Context, tenantID string) (*lifecycle.State, error)
	// Configured reports whether checkouts and portal sessions can be made.
	Configured() bool
}

// Messages of the refusals.
const (
	NotConfigured = "Billing is not configured on this server: set STRIPE_API_KEY (and the STRIPE_PRICE_* variables)"
	NoCustomer    = "This tenant has no billing account yet: complete a checkout first (POST /v1/billing/checkout)"
	ReadOnly      = "This tenant is managed in KGENTS_API_KEYS_FILE or is a dev tenant: it cannot be billed; sign up for a tenant of your own (POST /v1/signup)"
	NoPrice       = "No price is configured for this tier and interval on this server"
	Rejected      = "The payment provider refused the request; check the URLs and the plan, or contact support"
	Unavailable   = "The payment provider is unavailable; retry shortly"
)

// ProviderRetry is the retry delay of an unavailable payment provider.
const ProviderRetry = 5 * time.Second

// Service implements billingv1.BillingServiceServer.
type Service struct {
	billingv1.UnimplementedBillingServiceServer
	b     Billing
	audit Auditor
}

// Auditor records a started checkout in the audit log
// (*controlplane.Service).
type Auditor interface {
	RecordCheckout(ctx context.Context, a controlplane.Actor, tenantID, sessionID, tier, interval string) error
}

// New returns the service; audit may be nil (no entry for started
// checkouts).
func New(b Billing, audit Auditor) *Service { return &Service{b: b, audit: audit} }

// CreateCheckoutSession starts a Stripe Checkout for the caller's tenant.
func (s *Service) CreateCheckoutSession(ctx context.Context, req *billingv1.CreateCheckoutSessionRequest) (*billingv1.CreateCheckoutSessionResponse, error) {
	actor, id, err := tenantsvc.Caller(ctx)
	if err != nil {
		return nil, err
	}
	interval := "month"
	if req.GetInterval() == billingv1.Interval_INTERVAL_YEAR {
		interval = "year"
	}
	url, sid, err := s.b.Checkout(ctx, lifecycle.CheckoutRequest{
		TenantID: id.TenantID, Tier: tenantsvc.TierFrom(req.GetTier()), Interval: interval,
		SuccessURL: req.GetSuccessUrl(), CancelURL: req.GetCancelUrl(),
	})
	if err != nil {
		return nil, Err(err)
	}
	if s.audit != nil {
		// The session exists at Stripe either way: a missing entry is
		// logged by the control plane's store, not failed.
		_ = s.audit.RecordCheckout(ctx, actor, id.TenantID, sid, string(tenantsvc.TierFrom(req.GetTier())), interval)
	}
	return &billingv1.CreateCheckoutSessionResponse{Url: url, SessionId: sid}, nil
}

// CreatePortalSession opens the Customer Portal for the caller's tenant.
func (s *Service) CreatePortalSession(ctx context.Context, req *billingv1.CreatePortalSessionRequest) (*billingv1.CreatePortalSessionResponse, error) {
	_, id, err := tenantsvc.Caller(ctx)
	if err != nil {
		return nil, err
	}
	url, err := s.b.Portal(ctx, id.TenantID, req.GetReturnUrl())
	if err != nil {
		return nil, Err(err)
	}
	return &billingv1.CreatePortalSessionResponse{Url: url}, nil
}

// GetBilling returns the caller's tenant's billing state.
func (s *Service) GetBilling(ctx context.Context, _ *billingv1.GetBillingRequest) (*billingv1.GetBillingResponse, error) {
	_, id, err := tenantsvc.Caller(ctx)
	if err != nil {
		return nil, err
	}
	st, err := s.b.Get(ctx, id.TenantID)
	if err != nil {
		return nil, Err(err)
	}
	out := State(st)
	out.Configured = s.b.Configured()
	return out, nil
}

// State is st on the wire.
func State(st *lifecycle.State) *billingv1.GetBillingResponse {
	out := &billingv1.GetBillingResponse{
		Tier:       tenantsvc.TierProto(st.Tier),
		Status:     tenantsvc.StatusProto(st.Status),
		CustomerId: st.CustomerID,
	}
	if st.GraceUntil != nil && !st.GraceUntil.IsZero() {
		out.GraceUntil = timestamppb.New(*st.GraceUntil)
	}
	if sub := st.Subscription; sub != nil {
		out.Subscription = &billingv1.Subscription{
			Id: sub.ID, Status: sub.Status, PriceId: sub.PriceID, Interval: sub.Interval,
			CancelAtPeriodEnd: sub.CancelAtPeriodEnd,
		}
		if !sub.CurrentPeriodEnd.IsZero() {
			out.Subscription.CurrentPeriodEnd = timestamppb.New(sub.CurrentPeriodEnd)
		}
	}
	return out
}

// Err maps a lifecycle error to a gRPC status. The lifecycle's provider
// errors are already stripped of Stripe's text; control-plane errors map as
// the tenants service maps them; anything else is left to the statuserr
// interceptor (logged, answered as an opaque Internal).
func Err(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, lifecycle.ErrNotConfigured):
		return status.Error(codes.Unimplemented, NotConfigured)
	case errors.Is(err, lifecycle.ErrNoCustomer):
		return status.Error(codes.FailedPrecondition, NoCustomer)
	case errors.Is(err, lifecycle.ErrReadOnly):
		return status.Error(codes.FailedPrecondition, ReadOnly)
	case errors.Is(err, lifecycle.ErrNoPrice):
		return status.Error(codes.InvalidArgument, NoPrice)
	case errors.Is(err, lifecycle.ErrProviderRejected):
		return status.Error(codes.InvalidArgument, Rejected)
	case errors.Is(err, lifecycle.ErrProviderUnavailable):
		return statuserr.WithRetry(codes.Unavailable, Unavailable, ProviderRetry)
	}
	return tenantsvc.Err(err, tenantsvc.TenantNotFound)
}
