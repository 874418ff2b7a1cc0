// Package adminsvc is the operator API over gRPC (kgents.admin.v1, SPEC
// §4.13): every tenant, their keys, invitations, usage and the audit log.
// Every RPC needs scope operator, enforced by the policy table
// (server/methods.go) and again by the Manager. The handlers only map the
// wire to a controlplane.Manager and its errors to status codes.
package adminsvc

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/controlplane"
	adminv1 "github.com/kgents/kgents-go/gen/kgents/admin/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/server/tenantsvc"
	"github.com/kgents/kgents-go/tenancy"
)

// Page sizes when a request names none.
const (
	defaultTenantsPage = 20
	defaultAuditPage   = 50
)

// UsageReader reads a tenant's counters; *quota.Limiter is one.
type UsageReader interface {
	Usage(tenantID string) quota.Usage
}

// Service implements adminv1.AdminServiceServer.
type Service struct {
	adminv1.UnimplementedAdminServiceServer
	m       controlplane.Manager
	usage   UsageReader
	tiers   tenancy.Tiers
	history UsageHistory
}

// New returns the service. usage and tiers answer GetTenantUsage.
func New(m controlplane.Manager, usage UsageReader, tiers tenancy.Tiers) *Service {
	if tiers == nil {
		tiers = tenancy.DefaultTiers()
	}
	return &Service{m: m, usage: usage, tiers: tiers}
}

// CreateTenant makes a tenant.
func (s *Service) CreateTenant(ctx context.Context, req *adminv1.CreateTenantRequest) (*adminv1.CreateTenantResponse, error) {
	a, _, err := tenantsvc.Caller(ctx)
	if err != nil {
		return nil, err
	}
	tier := tenantsvc.TierFrom(req.GetTier())
	if tier == "" {
		tier = tenancy.TierFree
	}
	t, err := s.m.CreateTenant(ctx, a, req.GetName(), req.GetEmail(), tier)
	if err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	return &adminv1.CreateTenantResponse{Tenant: tenantsvc.Tenant(t)}, nil
}

// ListTenants pages through tenants.
func (s *Service) ListTenants(ctx context.Context, req *adminv1.ListTenantsRequest) (*adminv1.ListTenantsResponse, error) {
	if _, _, err := tenantsvc.Caller(ctx); err != nil {
		return nil, err
	}
	var f controlplane.TenantFilter
	// Validated (protovalidate): a known name, with or without its prefix.
	if v := strings.ToLower(req.GetTier()); v != "" {
		t, err := tenancy.ParseTier(strings.TrimPrefix(v, "tier_"))
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "tier: must be free, pro or enterprise")
		}
		f.Tier = &t
	}
	if v := strings.ToLower(req.GetStatus()); v != "" {
		st, err := controlplane.ParseStatus(strings.TrimPrefix(v, "tenant_status_"))
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "status: must be active, past_due, suspended or canceled")
		}
		f.Status = &st
	}
	f.Query = req.GetQ()
	limit := defaultTenantsPage
	if req.Limit != nil {
		limit = int(req.GetLimit())
	}
	ts, total, err := s.m.ListTenants(ctx, f, int(req.GetOffset()), limit)
	if err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	return &adminv1.ListTenantsResponse{Tenants: tenantsvc.Tenants(ts), Total: int32(min(total, 1<<31-1))}, nil //nolint:gosec // clamped
}

// GetTenant returns one tenant.
func (s *Service) GetTenant(ctx context.Context, req *adminv1.GetTenantRequest) (*adminv1.GetTenantResponse, error) {
	if _, _, err := tenantsvc.Caller(ctx); err != nil {
		return nil, err
	}
	t, err := s.m.GetTenant(ctx, req.GetTenantId())
	if err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	return &adminv1.GetTenantResponse{Tenant: tenantsvc.Tenant(t)}, nil
}

// UpdateTenant changes the fields the request gives.
func (s *Service) UpdateTenant(ctx context.Context, req *adminv1.UpdateTenantRequest) (*adminv1.UpdateTenantResponse, error) {
	a, _, err := tenantsvc.Caller(ctx)
	if err != nil {
		return nil, err
	}
	var p controlplane.TenantPatch
	p.Name, p.Email = req.Name, req.Email
	if req.Tier != nil {
		t := tenantsvc.TierFrom(req.GetTier())
		p.Tier = &t
	}
	if req.Status != nil {
		st := tenantsvc.StatusFrom(req.GetStatus())
		p.Status = &st
	}
	if req.Limits != nil {
		l := tenantsvc.LimitsFrom(req.GetLimits())
		p.Limits = &l
	}
	t, err := s.m.UpdateTenant(ctx, a, req.GetTenantId(), p)
	if err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	return &adminv1.UpdateTenantResponse{Tenant: tenantsvc.Tenant(t)}, nil
}

// ListTenantKeys lists a tenant's keys.
func (s *Service) ListTenantKeys(ctx context.Context, req *adminv1.ListTenantKeysRequest) (*adminv1.ListTenantKeysResponse, error) {
	if _, _, err := tenantsvc.Caller(ctx); err != nil {
		return nil, err
	}
	// ListKeys of an unknown tenant may answer an empty list: say 404.
	if _, err := s.m.GetTenant(ctx, req.GetTenantId()); err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	ks, err := s.m.ListKeys(ctx, req.GetTenantId())
	if err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	return &adminv1.ListTenantKeysResponse{Keys: tenantsvc.Keys(ks)}, nil
}

// CreateTenantKey mints a key for a tenant.
func (s *Service) CreateTenantKey(ctx context.Context, req *adminv1.CreateTenantKeyRequest) (*adminv1.CreateTenantKeyResponse, error) {
	a, _, err := tenantsvc.Caller(ctx)
	if err != nil {
		return nil, err
	}
	spec := tenantsvc.KeySpec(req.GetName(), req.GetScopes(), req.GetArchetypes(), req.GetExpiresAt())
	k, secret, err := s.m.CreateKey(ctx, a, req.GetTenantId(), spec)
	if err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	return &adminv1.CreateTenantKeyResponse{Key: tenantsvc.Key(k), Secret: secret}, nil
}

// GetTenantUsage is a tenant's usage against its limits.
func (s *Service) GetTenantUsage(ctx context.Context, req *adminv1.GetTenantUsageRequest) (*adminv1.GetTenantUsageResponse, error) {
	if _, _, err := tenantsvc.Caller(ctx); err != nil {
		return nil, err
	}
	t, err := s.m.GetTenant(ctx, req.GetTenantId())
	if err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	lim := s.tiers[t.Tier]
	if v := t.Limits.RequestsPerMinute; v != nil {
		lim.RequestsPerMinute = *v
	}
	if v := t.Limits.RequestsPerDay; v != nil {
		lim.RequestsPerDay = *v
	}
	if v := t.Limits.TokensPerMonth; v != nil {
		lim.TokensPerMonth = *v
	}
	var u quota.Usage
	if s.usage != nil {
		u = s.usage.Usage(t.ID)
	}
	return &adminv1.GetTenantUsageResponse{Usage: &usagev1.GetUsageResponse{
		TenantId:      t.ID,
		Tier:          string(t.Tier),
		Period:        u.Period,
		RequestsToday: u.RequestsToday,
		TokensToday:   u.TokensToday,
		TokensMonth:   u.TokensMonth,
		Limits: &usagev1.Limits{
			RequestsPerMinute: lim.RequestsPerMinute,
			RequestsPerDay:    lim.RequestsPerDay,
			TokensPerMonth:    lim.TokensPerMonth,
		},
	}}, nil
}

// CreateInvite makes a sign-up invitation.
func (s *Service) CreateInvite(ctx context.Context, req *adminv1.CreateInviteRequest) (*adminv1.CreateInviteResponse, error) {
	a, _, err := tenantsvc.Caller(ctx)
	if err != nil {
		return nil, err
	}
	var ttl time.Duration
	if req.ExpiresIn != nil {
		ttl = time.Duration(req.GetExpiresIn()) * time.Second
	}
	inv, err := s.m.CreateInvite(ctx, a, tenantsvc.TierFrom(req.GetTier()), ttl)
	if err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	return &adminv1.CreateInviteResponse{
		Code:      inv.Code,
		ExpiresAt: timestamppb.New(inv.ExpiresAt),
		Tier:      tenantsvc.TierProto(inv.Tier),
	}, nil
}

// ListAudit pages through the audit log, newest first.
func (s *Service) ListAudit(ctx context.Context, req *adminv1.ListAuditRequest) (*adminv1.ListAuditResponse, error) {
	if _, _, err := tenantsvc.Caller(ctx); err != nil {
		return nil, err
	}
	limit := defaultAuditPage
	if req.Limit != nil {
		limit = int(req.GetLimit())
	}
	var before time.Time
	if req.Before != nil {
		before = req.GetBefore().AsTime()
	}
	es, err := s.m.ListAudit(ctx, req.GetTenantId(), before, limit)
	if err != nil {
		return nil, tenantsvc.Err(err, tenantsvc.TenantNotFound)
	}
	out := make([]*adminv1.AuditEntry, 0, len(es))
	for _, e := range es {
		out = append(out, auditEntry(e))
	}
	return &adminv1.ListAuditResponse{Entries: out}, nil
}

func auditEntry(e *controlplane.AuditEntry) *adminv1.AuditEntry {
	d := make(map[string]*adminv1.Change, len(e.Detail))
	for k, c := range e.Detail {
		d[k] = &adminv1.Change{Old: jsonValue(c.Old), New: jsonValue(c.New)}
	}
	return &adminv1.AuditEntry{
		Id:       e.ID,
		Time:     timestamppb.New(e.Time),
		Actor:    e.Actor,
		TenantId: e.TenantID,
		Action:   e.Action,
		Detail:   d,
	}
}

// jsonValue is v as a JSON value, by way of its JSON encoding (audit
// details hold plain JSON-friendly values, times and scope sets included).
func jsonValue(v any) *structpb.Value {
	switch x := v.(type) {
	case nil:
		return structpb.NewNullValue()
	case tenancy.Scope:
		v = x.Names()
	}
	b, err := json.Marshal(v)
	if err != nil {
		return structpb.NewNullValue()
	}
	var out structpb.Value
	if err := out.UnmarshalJSON(b); err != nil {
		return structpb.NewNullValue()
	}
	return &out
}
