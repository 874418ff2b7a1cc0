// Package quota is the interceptor in front of every tenant call that
// enforces its limits (SPEC §4.8) with a quota.Limiter: it admits the call or
// refuses it with ResourceExhausted (429 with Retry-After), sets the
// rate-limit headers before the handler runs, and when the call ends gives
// back the reservation of a call refused as the caller's own error and
// debits the tokens the call reported to metering.
//
// A few methods are always answered (reading one's own usage, which is how a
// tenant over its limits sees why): over the limits they run anyway, with
// the rate-limit headers, consuming nothing.
package quota

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/tenancy"
)

// Interceptor enforces quotas.
type Interceptor struct {
	l      *quota.Limiter
	always map[string]bool
}

// New returns the interceptor.
func New(l *quota.Limiter) *Interceptor { return &Interceptor{l: l} }

// AlwaysAnswer names methods (full names) that are never refused for the
// caller's limits. Within the limits they are counted like any call; over
// them they run without consuming anything.
func (i *Interceptor) AlwaysAnswer(methods ...string) *Interceptor {
	i.always = make(map[string]bool, len(methods))
	for _, m := range methods {
		i.always[m] = true
	}
	return i
}

// admit admits the call. With ok false the call must end with err; with ok
// true and a nil ticket it runs unmetered by the limiter (an always-answered
// method over the limits).
func (i *Interceptor) admit(ctx context.Context, id *tenancy.Identity, method string) (t *quota.Ticket, headers metadata.MD, ok bool, err error) {
	ticket, err := i.l.Admit(ctx, id)
	if err == nil {
		return ticket, ticket.Headers, true, nil
	}
	if i.always[method] && status.Code(err) == codes.ResourceExhausted {
		// Admit gave back what it reserved; answer without Retry-After.
		h := ticket.Headers.Copy()
		delete(h, "retry-after")
		return nil, h, true, nil
	}
	return nil, ticket.Headers, false, err
}

// Unary is the unary interceptor.
func (i *Interceptor) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id := tenancy.IdentityFrom(ctx)
		if id == nil {
			return handler(ctx, req)
		}
		ticket, headers, ok, err := i.admit(ctx, id, info.FullMethod)
		_ = grpc.SetHeader(ctx, headers)
		if !ok {
			return nil, err
		}
		resp, err := handler(ctx, req)
		ticket.Finish(status.Code(err), int64(metering.RecorderFrom(ctx).TotalTokens()))
		return resp, err
	}
}

// Stream is the stream interceptor.
func (i *Interceptor) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx := ss.Context()
		id := tenancy.IdentityFrom(ctx)
		if id == nil {
			return handler(srv, ss)
		}
		ticket, headers, ok, err := i.admit(ctx, id, info.FullMethod)
		_ = ss.SetHeader(headers)
		if !ok {
			return err
		}
		err = handler(srv, ss)
		ticket.Finish(status.Code(err), int64(metering.RecorderFrom(ctx).TotalTokens()))
		return err
	}
}
