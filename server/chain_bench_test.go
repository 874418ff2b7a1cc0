package server

import (
	"context"
	"flag"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	mwauth "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	mwlogging "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	mwrecovery "github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	"github.com/kgents/kgents-go/interceptors/auth"
	"github.com/kgents/kgents-go/interceptors/fanout"
	"github.com/kgents/kgents-go/interceptors/idempotency"
	"github.com/kgents/kgents-go/interceptors/logging"
	"github.com/kgents/kgents-go/interceptors/metering"
	quotaic "github.com/kgents/kgents-go/interceptors/quota"
	"github.com/kgents/kgents-go/interceptors/recovery"
	"github.com/kgents/kgents-go/interceptors/statuserr"
	"github.com/kgents/kgents-go/interceptors/validate"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/server/soulsvc"
	"github.com/kgents/kgents-go/soul"
	"github.com/kgents/kgents-go/telemetry"
	"github.com/kgents/kgents-go/tenancy"
)

type dropEvents struct{}

func (dropEvents) Emit([]event.Event) {}

// chainServer serves the Soul service on loopback TCP with the given
// options and returns a client connection to it.
func chainServer(b *testing.B, opts ...grpc.ServerOption) *grpc.ClientConn {
	b.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	if *benchStreamWorkers {
		// Every variant serves as kgentsd does: calls run on a pool of
		// reused goroutines, so none pays a fresh goroutine's stack growth
		// to its chain's depth on every call.
		opts = append(opts, grpc.NumStreamWorkers(streamWorkers))
	}
	gs := grpc.NewServer(opts...)
	soulv1.RegisterSoulServiceServer(gs, soulsvc.New(soul.NewTemplateEngine(), soul.NewGovernor(nil)))
	go func() { _ = gs.Serve(lis) }()
	b.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	return conn
}

// fullChain builds kgentsd's interceptor chain and stats handler with
// in-process dependencies (dev keys, memory quota counters, events dropped
// after they are built, the real fan-out sink over a hub without NATS).
func fullChain(b *testing.B, withMetering bool) []grpc.ServerOption {
	b.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	reg := prometheus.NewRegistry()
	keyring, err := tenancy.NewKeyring(tenancy.KeyringOptions{DevKeys: true, Tiers: unlimitedTiers()})
	if err != nil {
		b.Fatal(err)
	}
	v, err := validate.New(&soulv1.DialogueRequest{})
	if err != nil {
		b.Fatal(err)
	}
	tracing, err := telemetry.NewTracing(context.Background(), "bench", "v1", "")
	if err != nil {
		b.Fatal(err)
	}
	metrics := grpcprom.NewServerMetrics()
	reg.MustRegister(metrics)
	p := policies(func(any) (tenancy.Scope, string) { return tenancy.ScopeRead, "" })
	parts := chainParts{
		logging:     logging.New(log, nil),
		metrics:     metrics,
		auth:        auth.New(keyring, authRules(p)),
		idempotency: idempotency.New(idempotency.NewMemory(0), nil, 0, log),
		quota:       quotaic.New(quota.NewLimiter(quota.NewMemory(), nil)),
		validate:    v,
		fanout:      fanout.New(nil),
		statuserr:   statuserr.New(log),
		recovery:    recovery.New(log, reg),
	}
	if withMetering {
		meter := metering.New(dropEvents{}, log, nil).Async(meteringQueue)
		b.Cleanup(func() { _ = meter.Close(context.Background()) })
		parts.metering = meter
	}
	unary, stream := parts.chain()
	return []grpc.ServerOption{
		grpc.StatsHandler(tracing.ServerStatsHandler()),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	}
}

// standardChain is the yardstick: go-grpc-middleware's own logging,
// Prometheus, auth and recovery interceptors with the same logger level and
// API key check (a map lookup) and otelgrpc's stats handler — what a
// service gets from the stock parts before adding metering, quotas,
// idempotency, validation and fan-out. The stock handler starts a span for
// every call; gated, it is kgentsd's (telemetry.ServerStatsHandler: spans
// only for calls continuing a trace, as nothing is exported here), so the
// two chains differ by their interceptors alone.
func standardChain(b *testing.B, gated bool) []grpc.ServerOption {
	b.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tracing, err := telemetry.NewTracing(context.Background(), "bench", "v1", "")
	if err != nil {
		b.Fatal(err)
	}
	metrics := grpcprom.NewServerMetrics()
	prometheus.NewRegistry().MustRegister(metrics)
	keys := map[string]*tenancy.Identity{"kg_dev_carol": {TenantID: "t", Limits: unlimitedTiers()[tenancy.TierEnterprise]}}
	authFn := func(ctx context.Context) (context.Context, error) {
		var id *tenancy.Identity
		if v := metadata.ValueFromIncomingContext(ctx, "x-api-key"); len(v) == 1 {
			id = keys[v[0]]
		}
		if id == nil {
			return nil, status.Error(codes.Unauthenticated, "unknown key")
		}
		return tenancy.WithIdentity(ctx, id), nil
	}
	sh := otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tracing.Provider), otelgrpc.WithPropagators(tracing.Propagator),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()))
	if gated {
		sh = tracing.ServerStatsHandler()
	}
	return []grpc.ServerOption{
		grpc.StatsHandler(sh),
		grpc.ChainUnaryInterceptor(
			mwlogging.UnaryServerInterceptor(mwlogging.LoggerFunc(func(ctx context.Context, lvl mwlogging.Level, msg string, fields ...any) {
				log.Log(ctx, slog.Level(lvl), msg, fields...)
			})),
			metrics.UnaryServerInterceptor(),
			mwauth.UnaryServerInterceptor(authFn),
			mwrecovery.UnaryServerInterceptor(),
		),
	}
}

func unlimitedTiers() tenancy.Tiers {
	t := tenancy.DefaultTiers()
	for k, l := range t {
		l.RequestsPerMinute, l.RequestsPerDay, l.TokensPerMonth = 0, 0, 0
		t[k] = l
	}
	return t
}

// benchStreamWorkers: BenchmarkChainOverhead's servers use kgentsd's stream
// worker pool (-bench-workers=false: a goroutine per call, grpc-go's
// default, as the figures before 2026-12-06's second run were measured).
var benchStreamWorkers = flag.Bool("bench-workers", true, "BenchmarkChainOverhead: serve on kgentsd's stream worker pool")

// BenchmarkChainOverhead compares one unary Soul.Dialogue call (template
// engine, loopback TCP, one caller) on bare grpc-go with the same call
// through kgentsd's whole chain: stats handler (OpenTelemetry, spans only
// for calls continuing a trace), logging,
// Prometheus, auth, metering, idempotency, quota, validation, fan-out,
// status errors, recovery. The difference of ns/op is the chain's cost.
func BenchmarkChainOverhead(b *testing.B) {
	req := &soulv1.DialogueRequest{Prompt: "What should I focus on this week?", Mode: soulv1.Mode_MODE_ADVISE, Budget: soulv1.Budget_BUDGET_DIALOGUE}
	run := func(b *testing.B, conn *grpc.ClientConn, ctx context.Context) {
		client := soulv1.NewSoulServiceClient(conn)
		if _, err := client.Dialogue(ctx, req); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			if _, err := client.Dialogue(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	}
	keyed := metadata.AppendToOutgoingContext(context.Background(), "x-api-key", "kg_dev_carol")
	b.Run("bare", func(b *testing.B) {
		// The bare server has no auth: it answers as the enterprise tenant.
		id := &tenancy.Identity{TenantID: "t", Limits: unlimitedTiers()[tenancy.TierEnterprise]}
		conn := chainServer(b, grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			return h(tenancy.WithIdentity(ctx, id), req)
		}))
		run(b, conn, keyed)
	})
	b.Run("standard-chain", func(b *testing.B) { run(b, chainServer(b, standardChain(b, false)...), keyed) })
	b.Run("standard-chain-gated", func(b *testing.B) { run(b, chainServer(b, standardChain(b, true)...), keyed) })
	b.Run("chain", func(b *testing.B) { run(b, chainServer(b, fullChain(b, true)...), keyed) })
	b.Run("chain-without-metering", func(b *testing.B) { run(b, chainServer(b, fullChain(b, false)...), keyed) })
}
