package tenantsvc

import (
	"context"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kgents/kgents-go/controlplane"
	tenantsv1 "github.com/kgents/kgents-go/gen/kgents/tenants/v1"
	"github.com/kgents/kgents-go/interceptors/statuserr"
	"github.com/kgents/kgents-go/tenancy"
)

// This file maps controlplane types to and from the wire, for this package
// and for adminsvc.

// Tenant is t on the wire.
func Tenant(t *controlplane.Tenant) *tenantsv1.Tenant {
	if t == nil {
		return nil
	}
	return &tenantsv1.Tenant{
		Id:                   t.ID,
		Name:                 t.Name,
		Email:                t.Email,
		Tier:                 TierProto(t.Tier),
		Status:               StatusProto(t.Status),
		Limits:               LimitsProto(t.Limits),
		StripeCustomerId:     t.StripeCustomerID,
		StripeSubscriptionId: t.StripeSubscriptionID,
		GraceUntil:           ts(t.GraceUntil),
		CreatedAt:            tsValue(t.CreatedAt),
		UpdatedAt:            tsValue(t.UpdatedAt),
		ReadOnly:             t.ReadOnly,
	}
}

// Tenants is ts on the wire.
func Tenants(ts []*controlplane.Tenant) []*tenantsv1.Tenant {
	out := make([]*tenantsv1.Tenant, 0, len(ts))
	for _, t := range ts {
		out = append(out, Tenant(t))
	}
	return out
}

// Key is k on the wire. It never carries a secret: Key has none.
func Key(k *controlplane.Key) *tenantsv1.Key {
	if k == nil {
		return nil
	}
	arch := k.Archetypes
	if arch == nil {
		arch = []string{}
	}
	return &tenantsv1.Key{
		Id:         k.ID,
		TenantId:   k.TenantID,
		Name:       k.Name,
		Prefix:     k.Prefix,
		Scopes:     ScopesProto(k.Scopes),
		Archetypes: arch,
		ExpiresAt:  ts(k.ExpiresAt),
		CreatedAt:  tsValue(k.CreatedAt),
		LastUsedAt: ts(k.LastUsedAt),
		RevokedAt:  ts(k.RevokedAt),
		ReadOnly:   k.ReadOnly,
	}
}

// Keys is ks on the wire.
func Keys(ks []*controlplane.Key) []*tenantsv1.Key {
	out := make([]*tenantsv1.Key, 0, len(ks))
	for _, k := range ks {
		out = append(out, Key(k))
	}
	return out
}

var tiers = map[tenancy.Tier]tenantsv1.Tier{
	tenancy.TierFree:       tenantsv1.Tier_TIER_FREE,
	tenancy.TierPro:        tenantsv1.Tier_TIER_PRO,
	tenancy.TierEnterprise: tenantsv1.Tier_TIER_ENTERPRISE,
}

// TierProto is t on the wire (unspecified for an unknown tier).
func TierProto(t tenancy.Tier) tenantsv1.Tier { return tiers[t] }

// TierFrom is a wire tier as the control plane's; unspecified is "" (the
// Manager's default, free).
func TierFrom(t tenantsv1.Tier) tenancy.Tier {
	for k, v := range tiers {
		if v == t {
			return k
		}
	}
	return ""
}

var statuses = map[controlplane.Status]tenantsv1.TenantStatus{
	controlplane.StatusActive:    tenantsv1.TenantStatus_TENANT_STATUS_ACTIVE,
	controlplane.StatusPastDue:   tenantsv1.TenantStatus_TENANT_STATUS_PAST_DUE,
	controlplane.StatusSuspended: tenantsv1.TenantStatus_TENANT_STATUS_SUSPENDED,
	controlplane.StatusCanceled:  tenantsv1.TenantStatus_TENANT_STATUS_CANCELED,
}

// StatusProto is s on the wire; empty is active.
func StatusProto(s controlplane.Status) tenantsv1.TenantStatus {
	if s == "" {
		return tenantsv1.TenantStatus_TENANT_STATUS_ACTIVE
	}
	return statuses[s]
}

// StatusFrom is a wire status as the control plane's ("" for unspecified).
func StatusFrom(s tenantsv1.TenantStatus) controlplane.Status {
	for k, v := range statuses {
		if v == s {
			return k
		}
	}
	return ""
}

var scopeBits = []struct {
	bit   tenancy.Scope
	proto tenantsv1.Scope
}{
	{tenancy.ScopeRead, tenantsv1.Scope_SCOPE_READ},
	{tenancy.ScopeWrite, tenantsv1.Scope_SCOPE_WRITE},
	{tenancy.ScopeAdmin, tenantsv1.Scope_SCOPE_ADMIN},
	{tenancy.ScopeOperator, tenantsv1.Scope_SCOPE_OPERATOR},
}

// ScopesProto lists s on the wire, in table order.
func ScopesProto(s tenancy.Scope) []tenantsv1.Scope {
	out := []tenantsv1.Scope{}
	for _, b := range scopeBits {
		if s.Has(b.bit) {
			out = append(out, b.proto)
		}
	}
	return out
}

// ScopesFrom is a wire scope list as a set.
func ScopesFrom(ss []tenantsv1.Scope) tenancy.Scope {
	var out tenancy.Scope
	for _, s := range ss {
		for _, b := range scopeBits {
			if b.proto == s {
				out |= b.bit
			}
		}
	}
	return out
}

// LimitsProto is l on the wire (null fields keep the tier's).
func LimitsProto(l controlplane.Limits) *tenantsv1.Limits {
	return &tenantsv1.Limits{
		RequestsPerMinute: l.RequestsPerMinute,
		RequestsPerDay:    l.RequestsPerDay,
		TokensPerMonth:    l.TokensPerMonth,
	}
}

// LimitsFrom is wire limits as the control plane's.
func LimitsFrom(l *tenantsv1.Limits) controlplane.Limits {
	return controlplane.Limits{
		RequestsPerMinute: l.RequestsPerMinute,
		RequestsPerDay:    l.RequestsPerDay,
		TokensPerMonth:    l.TokensPerMonth,
	}
}

// KeySpec builds a controlplane.KeySpec from a request's fields.
func KeySpec(name string, scopes []tenantsv1.Scope, archetypes []string, expires *timestamppb.Timestamp) controlplane.KeySpec {
	s := controlplane.KeySpec{Name: name, Scopes: ScopesFrom(scopes), Archetypes: archetypes}
	if expires != nil {
		t := expires.AsTime()
		s.ExpiresAt = &t
	}
	return s
}

func ts(t *time.Time) *timestamppb.Timestamp {
	if t == nil || t.IsZero() {
		return nil
	}
	return timestamppb.New(*t)
}

func tsValue(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// Caller is the calling key as a control-plane actor, or Unauthenticated.
func Caller(ctx context.Context) (controlplane.Actor, *tenancy.Identity, error) {
	id := tenancy.IdentityFrom(ctx)
	if id == nil {
		return controlplane.Actor{}, nil, status.Error(codes.Unauthenticated, tenancy.ErrKeyMissing.Error())
	}
	return controlplane.ActorFrom(id), id, nil
}

// Retry-After of an unavailable control plane.
const unavailableRetry = 2 * time.Second

// Err maps a Manager error to a gRPC status. notFound is the message of
// ErrNotFound ("Key not found"). The Manager's texts are written for the
// caller (they name the field of a bad input); anything else is left to
// the statuserr interceptor, which logs it and answers an opaque Internal.
func Err(err error, notFound string) error {
	var rl *controlplane.RateLimitedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &rl):
		return statuserr.WithRetry(codes.ResourceExhausted, rl.Error(), time.Duration(rl.RetryAfterSeconds())*time.Second)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	case errors.Is(err, controlplane.ErrUnavailable):
		// The wrapped text may say what failed inside: never shown.
		return statuserr.WithRetry(codes.Unavailable, controlplane.ErrUnavailable.Error(), unavailableRetry)
	case errors.Is(err, controlplane.ErrSignupOff):
		return status.Error(codes.NotFound, "Sign-up is not enabled on this server")
	case errors.Is(err, controlplane.ErrNotFound):
		return status.Error(codes.NotFound, notFound)
	case errors.Is(err, controlplane.ErrInvalid):
		return status.Error(codes.InvalidArgument, strip(err, controlplane.ErrInvalid))
	case errors.Is(err, controlplane.ErrForbidden):
		return status.Error(codes.PermissionDenied, strip(err, controlplane.ErrForbidden))
	case errors.Is(err, controlplane.ErrExists):
		return status.Error(codes.AlreadyExists, "A tenant with this email already exists")
	case errors.Is(err, controlplane.ErrReadOnly):
		return status.Error(codes.FailedPrecondition, controlplane.ErrReadOnly.Error())
	}
	return err
}

// strip removes the sentinel's own text from a wrapped error's: "invalid
// argument: email: not an email address" is "email: not an email address".
func strip(err, sentinel error) string {
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, sentinel.Error()+": "); ok && rest != "" {
		return rest
	}
	return msg
}
