// Package usagesvc is the Usage gRPC service: a tenant's own usage for the
// current UTC day and month, and its tier's limits.
package usagesvc

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/tenancy"
)

// Service implements usagev1.UsageServiceServer.
type Service struct {
	usagev1.UnimplementedUsageServiceServer
	limiter *quota.Limiter
}

// New returns the service.
func New(l *quota.Limiter) *Service { return &Service{limiter: l} }

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
