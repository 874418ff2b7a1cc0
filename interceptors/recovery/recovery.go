// Package recovery turns a panic in a handler into an Internal error. It is
// the innermost interceptor, so everything outside it (logging, metrics,
// metering) sees an ordinary failed call; the stack goes to the log only.
package recovery

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Recoverer recovers panics and counts them.
type Recoverer struct {
	log    *slog.Logger
	panics prometheus.Counter
}

// New returns a Recoverer registering kgents_grpc_panics_total on reg.
func New(log *slog.Logger, reg prometheus.Registerer) *Recoverer {
	r := &Recoverer{
		log: log,
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kgents_grpc_panics_total",
			Help: "Panics recovered in gRPC handlers.",
		}),
	}
	reg.MustRegister(r.panics)
	return r
}

func (r *Recoverer) recovered(ctx context.Context, method string, p any) error {
	r.panics.Inc()
	// The value as text: a JSON log would write a struct with unexported
	// fields as {}.
	r.log.ErrorContext(ctx, "panic in handler", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

// Unary is the unary interceptor.
func (r *Recoverer) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				resp, err = nil, r.recovered(ctx, info.FullMethod, p)
			}
		}()
		return handler(ctx, req)
	}
}

// Stream is the stream interceptor.
func (r *Recoverer) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = r.recovered(ss.Context(), info.FullMethod, p)
			}
		}()
		return handler(srv, ss)
	}
}
