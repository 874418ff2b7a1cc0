// Package statuserr normalises errors at the edge of the handlers: every
// error leaving a handler is a gRPC status, and the text of Internal, Unknown
// and DataLoss errors (which may carry internal detail) is replaced by a
// neutral message with a reference the operator can find in the log.
package statuserr

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/telemetry"
)

// Normalizer rewrites errors.
type Normalizer struct{ log *slog.Logger }

// New returns a Normalizer logging to log.
func New(log *slog.Logger) *Normalizer { return &Normalizer{log: log} }

// Normalize returns err as a status error safe to show a caller.
func (n *Normalizer) Normalize(ctx context.Context, method string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the call was canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the call took too long")
	}
	st, ok := status.FromError(err)
	if !ok {
		st = status.New(codes.Internal, err.Error())
	}
	switch st.Code() {
	case codes.Internal, codes.Unknown, codes.DataLoss:
		ref := telemetry.RequestID(ctx)
		n.log.ErrorContext(ctx, "internal error", "method", method, "code", st.Code().String(), "error", st.Message())
		msg := "internal error"
		if ref != "" {
			msg += " (request " + ref + ")"
		}
		return status.Error(codes.Internal, msg)
	}
	return st.Err()
}

// Unary is the unary interceptor.
func (n *Normalizer) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		if err != nil {
			return nil, n.Normalize(ctx, info.FullMethod, err)
		}
		return resp, nil
	}
}

// Stream is the stream interceptor.
func (n *Normalizer) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return n.Normalize(ss.Context(), info.FullMethod, handler(srv, ss))
	}
}
