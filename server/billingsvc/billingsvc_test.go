package billingsvc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/controlplane"
	billingv1 "github.com/kgents/kgents-go/gen/kgents/billing/v1"
	tenantsv1 "github.com/kgents/kgents-go/gen/kgents/tenants/v1"
	"github.com/kgents/kgents-go/server/billingsvc"
	"github.com/kgents/kgents-go/tenancy"
)

type fake struct {
	err  error
	got  lifecycle.CheckoutRequest
	port string
	st   *lifecycle.State
	off  bool
}

func (f *fake) Configured() bool { return !f.off }

func (f *fake) Checkout(_ context.Context, r lifecycle.CheckoutRequest) (string, string, error) {
	f.got = r
	return "https://checkout.example/cs_1", "cs_1", f.err
}

func (f *fake) Portal(_ context.Context, tenantID, _ string) (string, error) {
	f.port = tenantID
	return "https://portal.example/ps_1", f.err
}

func (f *fake) Get(context.Context, string) (*lifecycle.State, error) { return f.st, f.err }

func caller(tenant string) context.Context {
	return tenancy.WithIdentity(context.Background(), &tenancy.Identity{TenantID: tenant, KeyID: "key_1", Scopes: tenancy.ScopeAdmin})
}

func TestCheckoutUsesTheCallersTenant(t *testing.T) {
	f := &fake{}
	s := billingsvc.New(f, nil)
	out, err := s.CreateCheckoutSession(caller("t-1"), &billingv1.CreateCheckoutSessionRequest{Tier: tenantsv1.Tier_TIER_ENTERPRISE, Interval: billingv1.Interval_INTERVAL_YEAR})
	if err != nil || out.GetUrl() == "" || out.GetSessionId() != "cs_1" {
		t.Fatalf("checkout: %v %v", out, err)
	}
	if f.got.TenantID != "t-1" || f.got.Tier != tenancy.TierEnterprise || f.got.Interval != "year" {
		t.Errorf("request: %+v", f.got)
	}
	if _, err := s.CreateCheckoutSession(caller("t-1"), &billingv1.CreateCheckoutSessionRequest{Tier: tenantsv1.Tier_TIER_PRO}); err != nil || f.got.Interval != "month" {
		t.Errorf("default interval: %q %v", f.got.Interval, err)
	}
	if _, err := s.CreatePortalSession(caller("t-2"), &billingv1.CreatePortalSessionRequest{}); err != nil || f.port != "t-2" {
		t.Errorf("portal tenant: %q %v", f.port, err)
	}
	if _, err := s.GetBilling(context.Background(), &billingv1.GetBillingRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no identity: %v", err)
	}
}

func TestErrorsAreMappedWithoutStripeText(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
		want string
	}{
		{lifecycle.ErrNotConfigured, codes.Unimplemented, "STRIPE_API_KEY"},
		{lifecycle.ErrNoCustomer, codes.FailedPrecondition, "checkout"},
		{lifecycle.ErrReadOnly, codes.FailedPrecondition, "cannot be billed"},
		{fmt.Errorf("%w: pro/year", lifecycle.ErrNoPrice), codes.InvalidArgument, "No price"},
		{lifecycle.ErrProviderRejected, codes.InvalidArgument, "refused"},
		{lifecycle.ErrProviderUnavailable, codes.Unavailable, "retry"},
		{fmt.Errorf("%w: nats: timeout", controlplane.ErrUnavailable), codes.Unavailable, ""},
	} {
		err := billingsvc.Err(tc.err)
		st := status.Convert(err)
		if st.Code() != tc.code || !strings.Contains(st.Message(), tc.want) || strings.Contains(st.Message(), "nats") {
			t.Errorf("%v: %v %q", tc.err, st.Code(), st.Message())
		}
		if tc.code == codes.Unavailable {
			var ri *errdetails.RetryInfo
			for _, d := range st.Details() {
				if r, ok := d.(*errdetails.RetryInfo); ok {
					ri = r
				}
			}
			if ri == nil || ri.GetRetryDelay().AsDuration() <= 0 {
				t.Errorf("%v: no RetryInfo", tc.err)
			}
		}
	}
	if err := billingsvc.Err(errors.New("boom")); status.Code(err) != codes.Unknown {
		t.Errorf("unknown error not left to statuserr: %v", err)
	}
}

func TestStateOnTheWire(t *testing.T) {
	end := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	grace := end.Add(-time.Hour)
	w := billingsvc.State(&lifecycle.State{Tier: tenancy.TierPro, Status: controlplane.StatusPastDue, CustomerID: "cus_1", GraceUntil: &grace,
		Subscription: &lifecycle.Subscription{ID: "sub_1", Status: "past_due", PriceID: "price_1", Interval: "month", CurrentPeriodEnd: end}})
	if w.GetTier() != tenantsv1.Tier_TIER_PRO || w.GetStatus() != tenantsv1.TenantStatus_TENANT_STATUS_PAST_DUE || w.GetCustomerId() != "cus_1" ||
		!w.GetGraceUntil().AsTime().Equal(grace) || w.GetSubscription().GetCurrentPeriodEnd().AsTime() != end || w.GetSubscription().GetPriceId() != "price_1" {
		t.Errorf("state: %v", w)
	}
	w = billingsvc.State(&lifecycle.State{Tier: tenancy.TierFree, Status: controlplane.StatusActive, Subscription: &lifecycle.Subscription{ID: "sub_2"}})
	if w.Subscription == nil || w.Subscription.CurrentPeriodEnd != nil || w.GraceUntil != nil {
		t.Errorf("bare state: %v", w)
	}
}
