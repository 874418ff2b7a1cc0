// Package usagesvc is the Usage gRPC service: a tenant's own usage for the
// current UTC day and month, its tier's limits, and its usage history.
package usagesvc

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/billing"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/tenancy"
)

// Service implements usagev1.UsageServiceServer.
type Service struct {
	usagev1.UnimplementedUsageServiceServer
	limiter *quota.Limiter
	history History
	now     func() time.Time
}

// History reads usage history (*billing.Rollup; nil when NATS is disabled).
type History interface {
	History(ctx context.Context, tenant string, from, to time.Time, g billing.Granularity) ([]billing.Point, error)
}

// New returns the service. history may be nil: GetUsageHistory then
// answers Unavailable (no history is kept without NATS).
func New(l *quota.Limiter, history History) *Service {
	return &Service{limiter: l, history: history, now: time.Now}
}

// Limits of a history request (SPEC §4.14).
const (
	maxDays  = 92
	maxHours = 7 * 24
)

// GetUsageHistory returns the caller's tenant's usage per hour or day.
func (s *Service) GetUsageHistory(ctx context.Context, req *usagev1.GetUsageHistoryRequest) (*usagev1.GetUsageHistoryResponse, error) {
	id := tenancy.IdentityFrom(ctx)
	if id == nil {
		return nil, status.Error(codes.Unauthenticated, "no caller identity")
	}
	return HistoryOf(ctx, s.history, id.TenantID, req, s.now())
}

// HistoryOf answers a history request for tenant (the operator's per-tenant
// history uses it too).
func HistoryOf(ctx context.Context, h History, tenant string, req *usagev1.GetUsageHistoryRequest, now time.Time) (*usagev1.GetUsageHistoryResponse, error) {
	g := billing.Daily
	if req.GetGranularity() == "hour" {
		g = billing.Hourly
	}
	today := now.UTC().Truncate(24 * time.Hour)
	to := today
	if req.GetTo() != "" {
		t, err := billing.ParseDay(req.GetTo())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "to: %v", err)
		}
		to = t
	}
	span := 30
	if g == billing.Hourly {
		span = 7
	}
	from := to.AddDate(0, 0, -(span - 1))
	if req.GetFrom() != "" {
		t, err := billing.ParseDay(req.GetFrom())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "from: %v", err)
		}
		from = t
	}
	if from.After(to) {
		return nil, status.Error(codes.InvalidArgument, "from: must not be after to")
	}
	end := to.AddDate(0, 0, 1)
	switch n := end.Sub(from); {
	case g == billing.Daily && n > maxDays*24*time.Hour:
		return nil, status.Errorf(codes.InvalidArgument, "from: at most %d days by day", maxDays)
	case g == billing.Hourly && n > maxHours*time.Hour:
		return nil, status.Errorf(codes.InvalidArgument, "from: at most 7 days by hour (use granularity=day for longer)")
	}
	if h == nil {
		return nil, status.Error(codes.Unavailable, "usage history is not kept on this server (NATS is disabled)")
	}
	pts, err := h.History(ctx, tenant, from, end, g)
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Error(codes.Unavailable, "usage history cannot be read right now; retry shortly")
	}
	out := &usagev1.GetUsageHistoryResponse{TenantId: tenant, Granularity: string(g), Points: make([]*usagev1.UsagePoint, len(pts))}
	for i, p := range pts {
		out.Points[i] = &usagev1.UsagePoint{
			Start: timestamppb.New(p.Start), Requests: p.Requests, Errors: p.Errors, Tokens: p.Tokens,
			DialogueTurns: p.DialogueTurns, AgenteseInvocations: p.AgenteseInvocations, SessionsCreated: p.SessionsCreated,
		}
	}
	return out, nil
}

// GetUsage reports the caller's tenant's usage. It counts itself: the call
// that asks is one of today's requests.
func (s *Service) GetUsage(ctx context.Context, _ *usagev1.GetUsageRequest) (*usagev1.GetUsageResponse, error) {
	id := tenancy.IdentityFrom(ctx)
	if id == nil {
		return nil, status.Error(codes.Unauthenticated, "no caller identity")
	}
	u := s.limiter.Usage(id.TenantID)
	return &usagev1.GetUsageResponse{
		TenantId:      id.TenantID,
		Tier:          string(id.Tier),
		Period:        u.Period,
		RequestsToday: u.RequestsToday,
		TokensToday:   u.TokensToday,
		TokensMonth:   u.TokensMonth,
		Limits: &usagev1.Limits{
			RequestsPerMinute: id.Limits.RequestsPerMinute,
			RequestsPerDay:    id.Limits.RequestsPerDay,
			TokensPerMonth:    id.Limits.TokensPerMonth,
		},
	}, nil
}
