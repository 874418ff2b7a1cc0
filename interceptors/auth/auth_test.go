package auth_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/interceptors/auth"
	"github.com/kgents/kgents-go/tenancy"
)

type fixed struct{ id *tenancy.Identity }

func (f fixed) Authenticate(string) (*tenancy.Identity, error) { return f.id, nil }

func TestInactiveTenant(t *testing.T) {
	t.Parallel()
	rules := auth.Rules{Methods: map[string]auth.Rule{
		"/x/Do":     {Scope: tenancy.ScopeRead},
		"/x/Status": {Scope: tenancy.ScopeRead, AllowInactiveTenant: true},
	}}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-api-key", "kg_x"))
	ok := func(context.Context, any) (any, error) { return "ok", nil }
	for _, c := range []struct {
		st     tenancy.TenantStatus
		grace  time.Time
		reason string
	}{
		{tenancy.StatusActive, time.Time{}, ""},
		{tenancy.StatusPastDue, time.Now().Add(time.Hour), ""},
		{tenancy.StatusPastDue, time.Now().Add(-time.Hour), "tenant_suspended"},
		{tenancy.StatusSuspended, time.Time{}, "tenant_suspended"},
		{tenancy.StatusCanceled, time.Time{}, "tenant_canceled"},
	} {
		ic := auth.New(fixed{&tenancy.Identity{Scopes: tenancy.ScopeRead, TenantStatus: c.st, GraceUntil: c.grace}}, rules).Unary()
		_, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x/Do"}, ok)
		got := auth.TenantInactiveCode(status.Convert(err))
		if got != c.reason || (c.reason != "" && status.Code(err) != codes.FailedPrecondition) {
			t.Errorf("%s: %v (reason %q, want %q)", c.st, err, got, c.reason)
		}
		if _, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x/Status"}, ok); err != nil {
			t.Errorf("%s: allowed method refused: %v", c.st, err)
		}
	}
}
