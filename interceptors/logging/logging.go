// Package logging gives every call a request id and writes one log line per
// call when it ends: method, code, duration, tenant, and whether it came
// through the REST gateway. The id is the caller's x-request-id when it is
// well formed (the REST layer always sends one), a fresh one otherwise; it
// is returned as x-request-id header metadata. It is built on go-grpc-
// middleware's reporter, so unary and streaming calls are logged alike.
package logging

import (
	"context"
	"log/slog"
	"time"

	mwinterceptors "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kgents/kgents-go/interceptors"
	"github.com/kgents/kgents-go/telemetry"
)

// Logger is the logging reportable.
type Logger struct {
	log *slog.Logger
	// Calls from these services (health checks, reflection) log at debug.
	quiet func(service string) bool
}

// New returns a Logger. quiet names services whose calls log at debug level.
func New(log *slog.Logger, quiet func(service string) bool) *Logger {
	if quiet == nil {
		quiet = func(string) bool { return false }
	}
	return &Logger{log: log, quiet: quiet}
}

// Unary is the unary interceptor.
func (l *Logger) Unary() grpc.UnaryServerInterceptor {
	return mwinterceptors.UnaryServerInterceptor(l)
}

// Stream is the stream interceptor.
func (l *Logger) Stream() grpc.StreamServerInterceptor {
	return mwinterceptors.StreamServerInterceptor(l)
}

// ServerReporter starts a call's report and puts its request id in ctx.
func (l *Logger) ServerReporter(ctx context.Context, meta mwinterceptors.CallMeta) (mwinterceptors.Reporter, context.Context) {
	id := interceptors.FirstValue(ctx, "x-request-id")
	if !telemetry.ValidRequestID(id) {
		id = telemetry.NewRequestID()
	}
	ctx = telemetry.WithRequestID(ctx, id)
	tags := &interceptors.Tags{}
	ctx = interceptors.WithTags(ctx, tags)
	// Tell native callers the id; the gateway already knows it.
	info := interceptors.InfoFrom(ctx)
	if !info.ViaGateway {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-request-id", id))
	}
	return &report{l: l, ctx: ctx, meta: meta, via: info, tags: tags}, ctx
}

type report struct {
	l    *Logger
	ctx  context.Context
	meta mwinterceptors.CallMeta
	via  interceptors.CallInfo
	tags *interceptors.Tags
	sent int
}

func (r *report) PostMsgSend(_ any, err error, _ time.Duration) {
	if err == nil {
		r.sent++
	}
}

func (r *report) PostMsgReceive(any, error, time.Duration) {}

func (r *report) PostCall(err error, d time.Duration) {
	code := status.Code(err)
	level := slog.LevelInfo
	switch {
	case r.l.quiet(r.meta.Service):
		level = slog.LevelDebug
	case code == codes.Internal || code == codes.Unknown || code == codes.DataLoss:
		level = slog.LevelError
	case code == codes.Unavailable || code == codes.DeadlineExceeded:
		level = slog.LevelWarn
	}
	if !r.l.log.Enabled(r.ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 10)
	attrs = append(attrs,
		slog.String("method", interceptors.FullMethod(r.meta)),
		slog.String("code", code.String()),
		slog.Float64("duration_ms", float64(d.Microseconds())/1000),
	)
	if r.via.ViaGateway {
		attrs = append(attrs, slog.String("via", "rest"), slog.String("http_route", r.via.HTTPRoute))
	} else {
		attrs = append(attrs, slog.String("via", "grpc"))
	}
	if r.meta.Typ == mwinterceptors.ServerStream {
		attrs = append(attrs, slog.Int("messages_sent", r.sent))
	}
	if r.tags.TenantID != "" {
		attrs = append(attrs, slog.String("tenant_id", r.tags.TenantID), slog.String("key_id", r.tags.KeyID))
	}
	if r.tags.SessionID != "" {
		attrs = append(attrs, slog.String("session_id", r.tags.SessionID))
	}
	if err != nil && code != codes.OK {
		attrs = append(attrs, slog.String("error", status.Convert(err).Message()))
	}
	r.l.log.LogAttrs(r.ctx, level, "rpc", attrs...)
}
