package server

import (
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc"
)

// interceptor is one concern of the chain, with a unary and a stream form
// built on the same implementation.
type interceptor interface {
	Unary() grpc.UnaryServerInterceptor
	Stream() grpc.StreamServerInterceptor
}

// chainParts are the interceptors, built by New.
type chainParts struct {
	logging, statuserr, auth, validate, recovery interceptor
	metrics                                      *grpcprom.ServerMetrics
	// Added by later layers; nil means absent.
	metering, idempotency, quota, fanout interceptor
}

// chain lays out the interceptor order for every call, native gRPC or REST
// through the gateway (which dials this same server, so both run the same
// chain). OpenTelemetry is a stats handler, not an interceptor: it wraps all
// of this, so every log line and span below has the trace context.
//
// Outermost first, and why:
//
//  1. logging     request id into the context; one line per call with its final code.
//  2. metrics     grpc_server_* by method and code, as the caller saw them.
//  3. auth        identity (tenant, key, scopes) into the context; refuses a
//     missing or unknown key and a missing scope. Everything below
//     may rely on an identity; public services skip it.
//  4. metering    sees every authenticated call, including the ones quota
//     rejects (metered as 429s that consume no quota).
//  5. idempotency replays the stored answer to a repeated Idempotency-Key
//     before quota or handler run: a replay is not re-executed and
//     does not consume quota (its usage events keep their ids, so
//     billing dedupes them).
//  6. quota       rate limits and token quotas; sets the rate-limit headers.
//  7. validate    protovalidate rules: bad input never reaches a handler.
//  8. fanout      session-scoped methods only: publishes each event of a turn.
//  9. statuserr   every error is a status; internal text masked and logged.
//
// 10. recovery    innermost: a panic becomes Internal before anything above sees it.
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
	add(p.idempotency)
	add(p.quota)
	add(p.validate)
	add(p.fanout)
	add(p.statuserr)
	add(p.recovery)
	return unary, stream
}
