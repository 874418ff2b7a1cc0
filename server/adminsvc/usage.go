package adminsvc

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/billing"
	adminv1 "github.com/kgents/kgents-go/gen/kgents/admin/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/server/tenantsvc"
	"github.com/kgents/kgents-go/server/usagesvc"
)

// UsageHistory is what the usage-history RPCs read (*billing.Rollup).
type UsageHistory interface {
	usagesvc.History
	Top(ctx context.Context, month time.Time, by string, limit int) ([]billing.TenantTotal, error)
}

// WithHistory gives the service the usage history (nil: NATS disabled,
// the history RPCs answer Unavailable).
func (s *Service) WithHistory(h UsageHistory) *Service {
	s.history = h
	return s
}

// GetTenantUsageHistory is a tenant's usage history, as the tenant sees it.
func (s *Service) GetTenantUsageHistory(ctx context.Context, req *adminv1.GetTenantUsageHistoryRequest) (*adminv1.GetTenantUsageHistoryResponse, error) {
	if _, _, err := tenantsvc.Caller(ctx); err != nil {
		return nil, err
	}
	if _, err := s.m.GetTenant(ctx, req.GetTenantId()); err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	var h usagesvc.History
	if s.history != nil {
		h = s.history
	}
	out, err := usagesvc.HistoryOf(ctx, h, req.GetTenantId(), &usagev1.GetUsageHistoryRequest{
		From: req.GetFrom(), To: req.GetTo(), Granularity: req.GetGranularity(),
	}, time.Now())
	if err != nil {
		return nil, err
	}
	return &adminv1.GetTenantUsageHistoryResponse{History: out}, nil
}

// TopUsage ranks tenants by their use in a month.
func (s *Service) TopUsage(ctx context.Context, req *adminv1.TopUsageRequest) (*adminv1.TopUsageResponse, error) {
	if _, _, err := tenantsvc.Caller(ctx); err != nil {
		return nil, err
	}
	month := time.Now().UTC()
	if p := req.GetPeriod(); p != "" {
		t, err := time.Parse("2006-01", p)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "period: %q is not a month YYYY-MM", p)
		}
		month = t
	}
	by := req.GetBy()
	if by == "" {
		by = "tokens"
	}
	limit := 10
	if req.Limit != nil {
		limit = int(req.GetLimit())
	}
	if s.history == nil {
		return nil, status.Error(codes.Unavailable, "usage history is not kept on this server (NATS is disabled)")
	}
	top, err := s.history.Top(ctx, month, by, limit)
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Error(codes.Unavailable, "usage history cannot be read right now; retry shortly")
	}
	out := &adminv1.TopUsageResponse{Period: month.Format("2006-01"), By: by, Tenants: make([]*adminv1.TenantUsageTotal, len(top))}
	for i, t := range top {
		out.Tenants[i] = &adminv1.TenantUsageTotal{TenantId: t.TenantID, Requests: t.Requests, Tokens: t.Tokens, Errors: t.Errors}
	}
	return out, nil
}
