// Package tenantsvc is tenant self-service over gRPC (kgents.tenants.v1,
// SPEC §4.13): the caller's own tenant and its API keys, and sign-up. It is
// thin: requests are validated by protovalidate and scopes enforced by the
// policy table (server/methods.go) before a handler runs; the handlers map
// the wire to a controlplane.Manager, which enforces ownership and no
// escalation, and map its errors to status codes. The conversions here are
// shared with adminsvc.
package tenantsvc

import (
	"context"
	"time"

	"github.com/kgents/kgents-go/controlplane"
	tenantsv1 "github.com/kgents/kgents-go/gen/kgents/tenants/v1"
	"github.com/kgents/kgents-go/interceptors"
)

// Messages of NOT_FOUND.
const (
	TenantNotFound = "Tenant not found"
	KeyNotFound    = "Key not found"
)

// DefaultGrace is a rotation's grace when the request names none.
const DefaultGrace = time.Hour

// Service implements tenantsv1.TenantsServiceServer.
type Service struct {
	tenantsv1.UnimplementedTenantsServiceServer
	m controlplane.Manager
}

// New returns the service.
func New(m controlplane.Manager) *Service { return &Service{m: m} }

// GetTenant returns the caller's tenant.
func (s *Service) GetTenant(ctx context.Context, _ *tenantsv1.GetTenantRequest) (*tenantsv1.GetTenantResponse, error) {
	_, id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	t, err := s.m.GetTenant(ctx, id.TenantID)
	if err != nil {
		return nil, Err(err, TenantNotFound)
	}
	return &tenantsv1.GetTenantResponse{Tenant: Tenant(t)}, nil
}

// CreateKey mints a key for the caller's tenant.
func (s *Service) CreateKey(ctx context.Context, req *tenantsv1.CreateKeyRequest) (*tenantsv1.CreateKeyResponse, error) {
	a, id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	k, secret, err := s.m.CreateKey(ctx, a, id.TenantID, KeySpec(req.GetName(), req.GetScopes(), req.GetArchetypes(), req.GetExpiresAt()))
	if err != nil {
		return nil, Err(err, TenantNotFound)
	}
	return &tenantsv1.CreateKeyResponse{Key: Key(k), Secret: secret}, nil
}

// ListKeys lists the caller's tenant's keys.
func (s *Service) ListKeys(ctx context.Context, _ *tenantsv1.ListKeysRequest) (*tenantsv1.ListKeysResponse, error) {
	_, id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	ks, err := s.m.ListKeys(ctx, id.TenantID)
	if err != nil {
		return nil, Err(err, TenantNotFound)
	}
	return &tenantsv1.ListKeysResponse{Keys: Keys(ks)}, nil
}

// RevokeKey revokes one of the caller's tenant's keys.
func (s *Service) RevokeKey(ctx context.Context, req *tenantsv1.RevokeKeyRequest) (*tenantsv1.RevokeKeyResponse, error) {
	a, id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	k, err := s.m.RevokeKey(ctx, a, id.TenantID, req.GetKeyId())
	if err != nil {
		return nil, Err(err, KeyNotFound)
	}
	return &tenantsv1.RevokeKeyResponse{Key: Key(k)}, nil
}

// RotateKey replaces one of the caller's tenant's keys.
func (s *Service) RotateKey(ctx context.Context, req *tenantsv1.RotateKeyRequest) (*tenantsv1.RotateKeyResponse, error) {
	a, id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	grace := DefaultGrace
	if req.GraceSeconds != nil {
		grace = time.Duration(req.GetGraceSeconds()) * time.Second
	}
	k, secret, err := s.m.RotateKey(ctx, a, id.TenantID, req.GetKeyId(), grace)
	if err != nil {
		return nil, Err(err, KeyNotFound)
	}
	return &tenantsv1.RotateKeyResponse{Key: Key(k), Secret: secret}, nil
}

// Signup implements tenantsv1.SignupServiceServer. Its calls carry no API
// key (the policy table makes the method public); the Manager limits them
// per client address, and a successful one names its new tenant and key in
// the call's tags, which is what the metering interceptor bills it to.
type Signup struct {
	tenantsv1.UnimplementedSignupServiceServer
	m controlplane.Manager
}

// NewSignup returns the sign-up service.
func NewSignup(m controlplane.Manager) *Signup { return &Signup{m: m} }

// Signup makes a tenant and its first key.
func (s *Signup) Signup(ctx context.Context, req *tenantsv1.SignupRequest) (*tenantsv1.SignupResponse, error) {
	t, k, secret, err := s.m.Signup(ctx, req.GetEmail(), req.GetName(), req.GetInviteCode(), interceptors.ClientAddr(ctx))
	if err != nil {
		return nil, Err(err, TenantNotFound)
	}
	if tags := interceptors.TagsFrom(ctx); tags != nil {
		tags.TenantID, tags.KeyID = t.ID, k.ID
	}
	return &tenantsv1.SignupResponse{Tenant: Tenant(t), Key: Key(k), Secret: secret}, nil
}
