// Package quota is the interceptor in front of every tenant call that
// enforces its limits (SPEC §4.8) with a quota.Limiter: it admits the call or
// refuses it with ResourceExhausted (429 with Retry-After), sets the
// rate-limit headers before the handler runs, and when the call ends gives
// back the reservation of a call refused as the caller's own error and
// debits the tokens the call reported to metering.
package quota

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/tenancy"
)

// Interceptor enforces quotas.
type Interceptor struct{ l *quota.Limiter }

// New returns the interceptor.
func New(l *quota.Limiter) *Interceptor { return &Interceptor{l: l} }

// Unary is the unary interceptor.
func (i *Interceptor) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id := tenancy.IdentityFrom(ctx)
		if id == nil {
			return handler(ctx, req)
		}
		ticket, err := i.l.Admit(ctx, id)
		_ = grpc.SetHeader(ctx, ticket.Headers)
		if err != nil {
			return nil, err
		}
		resp, err := handler(ctx, req)
		ticket.Finish(status.Code(err), int64(metering.RecorderFrom(ctx).TotalTokens()))
		return resp, err
	}
}

// Stream is the stream interceptor.
func (i *Interceptor) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		id := tenancy.IdentityFrom(ctx)
		if id == nil {
			return handler(srv, ss)
		}
		ticket, err := i.l.Admit(ctx, id)
		_ = ss.SetHeader(ticket.Headers)
		if err != nil {
			return err
		}
		err = handler(srv, ss)
		ticket.Finish(status.Code(err), int64(metering.RecorderFrom(ctx).TotalTokens()))
		return err
	}
}
