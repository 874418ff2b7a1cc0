package server

import (
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc"

	"github.com/kgents/kgents-go/interceptors/auth"
	"github.com/kgents/kgents-go/interceptors/fanout"
	"github.com/kgents/kgents-go/interceptors/idempotency"
	"github.com/kgents/kgents-go/interceptors/logging"
	quotaic "github.com/kgents/kgents-go/interceptors/quota"
	"github.com/kgents/kgents-go/interceptors/recovery"
	"github.com/kgents/kgents-go/interceptors/statuserr"
	"github.com/kgents/kgents-go/interceptors/validate"
)

// interceptor is one concern of the chain, with a unary and a stream form
// built on the same implementation.
type interceptor interface {
	Unary() grpc.UnaryServerInterceptor
	Stream() grpc.StreamServerInterceptor
}

// newChain builds every interceptor of the chain, in one place, from the
// services' dependencies and the policy table, and returns them in order.
func (s *Server) newChain(svc *services, validator *validate.Validator, metrics *grpcprom.ServerMetrics) ([]grpc.UnaryServerInterceptor, []grpc.StreamServerInterceptor) {
	p := chainParts{
		logging:  logging.New(s.log, isPublicService),
		metrics:  metrics,
		auth:     auth.New(svc.controlPlane, authRules(svc.policy.byMethod)),
		metering: svc.meter,
		// Replays pass the per-minute bucket, not the daily or token quotas.
		ratelimit:   quotaic.NewRateLimit(svc.limiter, svc.policy.idempotent),
		idempotency: idempotency.New(svc.idem, svc.policy.idempotent, s.cfg.Sessions.TurnTimeout+time.Minute, s.log),
		quota:       quotaic.New(svc.limiter).AlwaysAnswer(svc.policy.alwaysAnswered...),
		validate:    validator,
		fanout:      fanout.New(svc.policy.sessionScoped),
		statuserr:   statuserr.New(s.log),
		recovery:    recovery.New(s.log, s.reg),
	}
	return p.chain()
}

// chainParts are the interceptors (nil: absent), laid out by chain.
type chainParts struct {
	logging, statuserr, auth, validate, recovery interceptor
	metrics                                      *grpcprom.ServerMetrics
	// Added by later layers; nil means absent.
	metering, ratelimit, idempotency, quota, fanout interceptor
}

// chain lays out the interceptor order for every call, native gRPC or REST
// (the gateway's in-process channel runs this same chain, inproc.go).
// OpenTelemetry is a stats handler, not an interceptor: it wraps all of
// this, so every log line and span below has the trace context.
//
// Outermost first, and why:
//
//  1. logging     request id into the context; one line per call with its
//     final code, tenant and session.
//  2. metrics     grpc_server_* by method and code, as the caller saw them.
//  3. auth        identity (tenant, key, scopes) into the context; refuses a
//     missing or unknown key, a missing scope and an inactive tenant.
//     Everything below may rely on an identity; public services skip it.
//  4. metering    sees every authenticated call, including the ones the
//     limits reject (metered as 429s that consume no quota).
//  5. ratelimit   the per-minute request bucket, for every call including
//     idempotent replays (a replay costs the server a request too).
//  6. idempotency replays the stored answer to a repeated Idempotency-Key
//     before quota or handler run: a replay is not re-executed, does not
//     consume the daily or token quotas and is not billed again (its
//     usage events keep their ids).
//  7. quota       daily requests and monthly tokens; sets the rate-limit headers.
//  8. validate    protovalidate rules: bad input never reaches a handler. Also
//     refuses requests that could not be read (malformed protobuf,
//     decoded by validate.Codec to a marked empty message; a REST
//     body or query the gateway could not decode, sent as a call
//     marked validate.MDRefused): inside the chain, so they are
//     authenticated, metered and rate-limited like any 400.
//  9. fanout      session-scoped methods only: tags the call with its
//     session id (the events themselves are the Sessions service's, which
//     publishes them through the sink it is constructed with).
//  10. statuserr  every error is a status; internal text masked and logged.
//  11. recovery   innermost: a panic becomes Internal before anything above sees it.
func (p chainParts) chain() (unary []grpc.UnaryServerInterceptor, stream []grpc.StreamServerInterceptor) {
	add := func(i interceptor) {
		if i == nil {
			return
		}
		unary = append(unary, i.Unary())
		stream = append(stream, i.Stream())
	}
	add(p.logging)
	if p.metrics != nil {
		unary = append(unary, p.metrics.UnaryServerInterceptor())
		stream = append(stream, p.metrics.StreamServerInterceptor())
	}
	add(p.auth)
	add(p.metering)
	add(p.ratelimit)
	add(p.idempotency)
	add(p.quota)
	add(p.validate)
	add(p.fanout)
	add(p.statuserr)
	add(p.recovery)
	return unary, stream
}
