package quota

import (
	"context"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/tenancy"
)

// RateLimit is the per-minute half of the quota for the methods that honour
// an Idempotency-Key. It sits before the idempotency interceptor, which
// answers a replay without going further: a replay is still a request, so
// it spends a token of the key's bucket (and is refused with 429 when the
// bucket is empty), but it is not a new run, so the daily request and
// monthly token quotas — checked by the Interceptor after idempotency —
// neither refuse nor count it. For a call that does run, the Interceptor
// continues from this stage's ticket (quota.WithRateTicket): the bucket is
// charged once, the headers set once.
type RateLimit struct {
	l       *quota.Limiter
	methods interceptors.Methods
}

// NewRateLimit returns the stage for methods (full names); other methods
// pass through to the Interceptor, which checks everything itself.
func NewRateLimit(l *quota.Limiter, methods []string) *RateLimit {
	return &RateLimit{l: l, methods: interceptors.MethodSet(methods...)}
}

// Unary is the unary interceptor.
func (r *RateLimit) Unary() grpc.UnaryServerInterceptor {
	return selector.UnaryServerInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id := tenancy.IdentityFrom(ctx)
		if id == nil {
			return handler(ctx, req)
		}
		ticket, err := r.l.AdmitRate(ctx, id)
		_ = grpc.SetHeader(ctx, ticket.Headers)
		if err != nil {
			return nil, err
		}
		resp, err := handler(quota.WithRateTicket(ctx, ticket), req)
		ticket.Settle(status.Code(err))
		return resp, err
	}, r.methods)
}

// Stream is the stream interceptor.
func (r *RateLimit) Stream() grpc.StreamServerInterceptor {
	return selector.StreamServerInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		id := tenancy.IdentityFrom(ctx)
		if id == nil {
			return handler(srv, ss)
		}
		ticket, err := r.l.AdmitRate(ctx, id)
		_ = ss.SetHeader(ticket.Headers)
		if err != nil {
			return err
		}
		err = handler(srv, interceptors.WithContext(ss, quota.WithRateTicket(ctx, ticket)))
		ticket.Settle(status.Code(err))
		return err
	}, r.methods)
}
