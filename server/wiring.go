package server

// Wiring: building the services, their dependencies, the gRPC server and
// the gateway (New calls these in order).

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/fullstorydev/grpchan"
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/kgents/kgents-go/agentese"
	"github.com/kgents/kgents-go/billing"
	adminv1 "github.com/kgents/kgents-go/gen/kgents/admin/v1"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	billingv1 "github.com/kgents/kgents-go/gen/kgents/billing/v1"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	tenantsv1 "github.com/kgents/kgents-go/gen/kgents/tenants/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/interceptors/fanout"
	"github.com/kgents/kgents-go/interceptors/idempotency"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/interceptors/validate"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/server/adminsvc"
	"github.com/kgents/kgents-go/server/agentesesvc"
	"github.com/kgents/kgents-go/server/billingsvc"
	"github.com/kgents/kgents-go/server/sessionsvc"
	"github.com/kgents/kgents-go/server/soulsvc"
	"github.com/kgents/kgents-go/server/tenantsvc"
	"github.com/kgents/kgents-go/server/usagesvc"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/soul"
	"github.com/kgents/kgents-go/streaming"
)

func (s *Server) buildServices(ctx context.Context) (*services, error) {
	cfg := s.cfg
	engine, err := s.buildEngine()
	if err != nil {
		return nil, err
	}
	s.health.engine = engine.Name
	soulSvc := soulsvc.New(engine, soul.NewGovernor(engine), soulsvc.WithCutoff(s.turnCutoff))
	agSvc := agentesesvc.New(agentese.DefaultRegistry(soulSvc), agentesesvc.WithLogger(s.log))
	// The one RPC policy table; an AGENTESE invocation's scope depends on its path.
	policy := newPolicyTable(agSvc.InvokeScope)

	var (
		store   sessionstore.Store
		idem    idempotency.Store
		history *streaming.History
		// inflight keeps the usage of long calls in flight (metering.Durable).
		inflight *billing.Inflight
	)
	hub := streaming.NewHub(s.nats, streaming.HubOptions{Logger: s.log, Registerer: s.reg, Tracer: s.tracing.Provider})
	s.health.nats = natsHealth(s.nats, s.pub, hub)
	if s.nats.Enabled() {
		history = streaming.NewHistory(s.nats.JetStream(), streaming.HistoryOptions{Tracer: s.tracing.Provider, TurnTimeout: cfg.Sessions.TurnTimeout})
		jsStore := s.sessionsJS
		jsIdem := idempotency.NewJetStream(s.nats.JetStream(), cfg.NATS.Replicas, cfg.Sessions.IdempotencyTTL).FailFast(s.nats.Connected)
		inflight = billing.NewInflight(s.nats.JetStream(), cfg.NATS.Replicas)
		ensure := func() {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			events := func(ctx context.Context) error {
				return streaming.EnsureEventsStream(ctx, s.nats.JetStream(), cfg.NATS.Replicas)
			}
			metering := func(ctx context.Context) error {
				_, err := billing.EnsureStream(ctx, s.nats.JetStream(), cfg.NATS.Replicas)
				return err
			}
			for _, e := range []func(context.Context) error{jsStore.EnsureResources, jsIdem.EnsureResources, events, metering, inflight.EnsureResources} {
				if err := e(ctx); err != nil {
					s.log.Warn("JetStream resources not ready; retrying on next use", "error", err)
				}
			}
			// Sessions of an older storage layout, once per deployment.
			mctx, cancelMigrate := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancelMigrate()
			if n, err := jsStore.Migrate(mctx); err != nil {
				s.log.Error("session storage migration failed; it runs again at the next start or reconnect", "error", err)
			} else if n > 0 {
				s.log.Info("migrated sessions to the current storage layout", "sessions", n)
			}
		}
		if s.nats.Connected() {
			ensure()
		}
		// Every (re)connection re-creates what may be missing (a new cluster).
		s.nats.OnConnect(func() { go ensure() })
		store, idem = sessionstore.NewResilient(jsStore, s.pub, 10_000), jsIdem
	} else {
		store, idem = sessionstore.NewMemory(), idempotency.NewMemory(cfg.Sessions.IdempotencyTTL)
	}

	// Every event of every turn goes to this replica's hub and to JetStream.
	var eventPub fanout.MessagePublisher
	if s.nats.Enabled() {
		eventPub = s.pub
	}
	events := fanout.NewPublisher(hub, eventPub, s.tracing.Provider, s.log, s.reg)
	sessions := sessionsvc.New(sessionsvc.Options{
		Events:            events,
		Store:             store,
		Engine:            engine,
		Replica:           cfg.Sessions.Replica,
		TurnTimeout:       cfg.Sessions.TurnTimeout,
		TurnLease:         cfg.Sessions.TurnLease,
		TurnCutoff:        s.turnCutoff,
		Watch:             watchAdapter{hub: hub, history: history},
		Stopping:          s.stopping,
		WatchersPerTenant: cfg.Sessions.WatchersPerTenant,
		WatchGapWait:      cfg.Sessions.WatchGapWait,
		Logger:            s.log,
	})
	s.turns = sessions
	var counters quota.Counters = quota.NewMemory()
	if s.nats.Enabled() {
		kv := quota.NewKV(s.nats.JetStream(), quota.KVOptions{Replicas: cfg.NATS.Replicas, Logger: s.log, Registerer: s.reg, Connected: s.nats.Connected})
		s.background("quota-counters", kv.Run)
		counters = kv
		// Enforce and report the shared totals from the first call: load
		// today's and this month's counters before serving (bounded; with
		// NATS away they fail open and are read when first used).
		if s.nats.Connected() {
			lctx, cancel := context.WithTimeout(ctx, quotaLoadTimeout)
			if err := kv.Load(lctx); err != nil {
				s.log.Warn("quota counters not loaded before serving; each is read when first used", "error", err)
			}
			cancel()
		}
	}
	limiter := quota.NewLimiter(counters, nil)
	// Usage history (SPEC §4.14): every replica runs the rollup; they
	// share its work range by range (billing/rollup.go).
	var usageHistory usagesvc.History
	if s.nats.Enabled() {
		rollup := billing.NewRollup(s.nats.JetStream(), billing.RollupConfig{
			Replicas: cfg.NATS.Replicas, DedupeWindow: cfg.Usage.DedupeWindow, DedupeMaxIDs: cfg.Usage.DedupeMaxIDs,
			Logger: s.log, Registerer: s.reg,
		})
		s.background("usage-rollup", rollup.Run)
		usageHistory = rollup
	}

	svc := &services{
		sessions: sessions,
		soul:     soulSvc,
		agentese: agSvc,
		usage:    usagesvc.New(limiter, usageHistory),
		policy:   policy,
		limiter:  limiter,
		idem:     idem,
	}
	svc.controlPlane = s.newControlPlane()
	bl, err := s.newBilling(ctx, svc.controlPlane)
	if err != nil {
		return nil, fmt.Errorf("billing: %w", err)
	}
	svc.billing = billingsvc.New(bl, svc.controlPlane)
	svc.tenants = tenantsvc.New(svc.controlPlane)
	svc.signup = tenantsvc.NewSignup(svc.controlPlane)
	admin := adminsvc.New(svc.controlPlane, limiter, s.keyring.Tiers())
	if r, ok := usageHistory.(*billing.Rollup); ok {
		admin.WithHistory(r)
	}
	svc.admin = admin
	// Usage events are built off the request path; the closer (run after
	// the servers stop, before the publisher closes: closers run in
	// reverse) drains what is queued.
	meter := metering.New(s.usageEvents(), s.log, s.reg).Async(meteringQueue).MeterLate(policy.meteredLate...).WithEventClock(s.opts.EventClock)
	if s.nats.Enabled() {
		// Long calls keep a durable record of what they served, billed by
		// any replica's sweeper if this one dies mid-call (billing.md).
		meter.Durable(context.Background(), inflight,
			metering.DurableOptions{Owner: cfg.Sessions.Replica, DeadAfter: cfg.Sessions.InflightDeadAfter,
				// A watch bills only its api.request: a record per watcher
				// would be a KV write every few seconds each.
				Skip: []string{sessionsv1.SessionsService_WatchSession_FullMethodName}})
	}
	s.addCloser(meter.Close)
	svc.meter = meter
	if err := s.buildOpenMeterSink(); err != nil {
		return nil, err
	}
	return svc, nil
}

// buildOpenMeterSink sets up the processor that delivers the metering
// stream to OpenMeter (every replica runs it on one shared durable
// consumer). Disabled, usage events still accumulate in the stream.
func (s *Server) buildOpenMeterSink() error {
	if !s.nats.Enabled() {
		return nil
	}
	om := s.cfg.OpenMeter
	proc, err := billing.NewProcessor(s.nats.JetStream(), billing.ProcessorConfig{
		Enabled:       om.Enabled,
		BaseURL:       om.BaseURL,
		APIKey:        om.APIKey,
		BatchSize:     om.BatchSize,
		FlushInterval: om.FlushInterval,
		Replicas:      s.cfg.NATS.Replicas,
		Logger:        s.log,
		Registerer:    s.reg,
		Tracer:        s.tracing.Provider,
	})
	if err != nil {
		return fmt.Errorf("OpenMeter sink: %w", err)
	}
	s.health.openmeter = openMeterHealth(proc)
	if om.Enabled {
		s.background("openmeter-sink", func(ctx context.Context) {
			if err := proc.Run(ctx); err != nil {
				s.log.Error("OpenMeter sink stopped", "error", err)
			}
		})
	}
	return nil
}

// streamWorkers is the gRPC server's pool of reused stream goroutines.
const streamWorkers = 64

// quotaLoadTimeout bounds loading the quota counters at start-up.
const quotaLoadTimeout = 5 * time.Second

// meteringQueue is how many finished calls may wait for their usage events
// to be built (beyond it, callers build their own: slower, never lost).
const meteringQueue = 4096

// buildEngine picks the soul engine: the OpenAI-compatible one when an LLM
// endpoint is configured, the offline template engine otherwise.
func (s *Server) buildEngine() (soul.Engine, error) {
	if s.cfg.LLM.Endpoint == "" {
		return &soul.TemplateEngine{ChunkDelay: s.cfg.LLM.TemplateChunkDelay}, nil
	}
	e, err := soul.NewOpenAIEngine(soul.OpenAIConfig{
		BaseURL: s.cfg.LLM.Endpoint,
		APIKey:  s.cfg.LLM.APIKey,
		Model:   s.cfg.LLM.Model,
		Timeout: s.cfg.LLM.Timeout,
	})
	if err != nil {
		return nil, fmt.Errorf("LLM_ENDPOINT: %w", err)
	}
	s.log.Info("soul engine: OpenAI-compatible", "endpoint", s.cfg.LLM.Endpoint, "model", s.cfg.LLM.Model)
	return e, nil
}

func (s *Server) buildGRPC(svc *services) error {
	validator, err := validate.New(
		&sessionsv1.CreateSessionRequest{}, &sessionsv1.ListSessionsRequest{}, &sessionsv1.GetSessionRequest{},
		&sessionsv1.CloseSessionRequest{}, &sessionsv1.SendMessageRequest{}, &sessionsv1.StreamMessageRequest{},
		&sessionsv1.ListMessagesRequest{}, &sessionsv1.WatchSessionRequest{},
		&soulv1.DialogueRequest{}, &soulv1.StreamDialogueRequest{}, &soulv1.GovernanceRequest{},
		&agentesev1.InvokeRequest{}, &agentesev1.InvokeStreamRequest{}, &agentesev1.ResolveRequest{},
		&agentesev1.AffordancesRequest{}, &usagev1.GetUsageRequest{},
		&tenantsv1.GetTenantRequest{}, &tenantsv1.CreateKeyRequest{}, &tenantsv1.ListKeysRequest{},
		&tenantsv1.RevokeKeyRequest{}, &tenantsv1.RotateKeyRequest{}, &tenantsv1.SignupRequest{},
		&adminv1.CreateTenantRequest{}, &adminv1.ListTenantsRequest{}, &adminv1.GetTenantRequest{},
		&adminv1.UpdateTenantRequest{}, &adminv1.ListTenantKeysRequest{}, &adminv1.CreateTenantKeyRequest{},
		&adminv1.GetTenantUsageRequest{}, &adminv1.CreateInviteRequest{}, &adminv1.ListAuditRequest{},
		&billingv1.CreateCheckoutSessionRequest{}, &billingv1.CreatePortalSessionRequest{}, &billingv1.GetBillingRequest{},
	)
	if err != nil {
		return fmt.Errorf("protovalidate: %w", err)
	}
	grpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
	))
	s.reg.MustRegister(grpcMetrics)

	unary, stream := s.newChain(svc, validator, grpcMetrics)
	statsHandler := s.tracing.ServerStatsHandler()

	s.grpc = grpc.NewServer(
		grpc.StatsHandler(statsHandler),
		// Requests that do not decode are the caller's error, refused by
		// the validate interceptor (grpc-go would answer Internal).
		grpc.ForceServerCodecV2(validate.NewCodec()),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		// Watchers are streams: never cap them per connection.
		grpc.MaxConcurrentStreams(math.MaxUint32),
		// A pool of stream goroutines, reused: a fresh goroutine per call
		// grows its stack to the chain's depth every time (copystack was
		// 7% of CPU under load). Beyond the pool (long watches hold
		// workers) grpc-go starts goroutines as before.
		grpc.NumStreamWorkers(streamWorkers),
		grpc.MaxRecvMsgSize(4<<20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	// The gateway's channel runs the same chain and stats handler (inproc.go).
	gwChannel, gwRegistrar := newGatewayChannel(statsHandler, unary, stream)
	for _, reg := range []grpc.ServiceRegistrar{s.grpc, gwRegistrar} {
		sessionsv1.RegisterSessionsServiceServer(reg, svc.sessions)
		soulv1.RegisterSoulServiceServer(reg, svc.soul)
		agentesev1.RegisterAgenteseServiceServer(reg, svc.agentese)
		usagev1.RegisterUsageServiceServer(reg, svc.usage)
		tenantsv1.RegisterTenantsServiceServer(reg, svc.tenants)
		tenantsv1.RegisterSignupServiceServer(reg, svc.signup)
		adminv1.RegisterAdminServiceServer(reg, svc.admin)
		billingv1.RegisterBillingServiceServer(reg, svc.billing)
	}
	s.gwConn = grpchan.InterceptClientConn(gwChannel, markReachedUnary, markReachedStream)
	s.grpcHealth = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.grpcHealth)
	reflection.Register(s.grpc)
	grpcMetrics.InitializeMetrics(s.grpc)
	// NOT_SERVING until Serve has everything running.
	s.setServing(healthpb.HealthCheckResponse_NOT_SERVING)
	return nil
}

func (s *Server) listen() error {
	var err error
	host := s.cfg.ListenHost
	if s.grpcLis, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(s.cfg.GRPCPort))); err != nil {
		return fmt.Errorf("GRPC_PORT: %w", err)
	}
	s.addCloser(func(context.Context) error { _ = s.grpcLis.Close(); return nil })
	if s.httpLis, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(s.cfg.HTTPPort))); err != nil {
		return fmt.Errorf("HTTP_PORT: %w", err)
	}
	s.addCloser(func(context.Context) error { _ = s.httpLis.Close(); return nil })
	if s.cfg.MetricsPort != 0 {
		if s.metricsLis, err = net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(s.cfg.MetricsPort))); err != nil {
			return fmt.Errorf("METRICS_PORT: %w", err)
		}
		s.addCloser(func(context.Context) error { _ = s.metricsLis.Close(); return nil })
	}
	return nil
}

func (s *Server) buildGateway(ctx context.Context) error {
	s.gwMux = s.newGatewayMux()
	for _, register := range []func(context.Context, *runtime.ServeMux) error{
		func(ctx context.Context, mux *runtime.ServeMux) error {
			return sessionsv1.RegisterSessionsServiceHandlerClient(ctx, mux, sessionsv1.NewSessionsServiceClient(s.gwConn))
		},
		func(ctx context.Context, mux *runtime.ServeMux) error {
			return soulv1.RegisterSoulServiceHandlerClient(ctx, mux, soulv1.NewSoulServiceClient(s.gwConn))
		},
		func(ctx context.Context, mux *runtime.ServeMux) error {
			return agentesev1.RegisterAgenteseServiceHandlerClient(ctx, mux, agentesev1.NewAgenteseServiceClient(s.gwConn))
		},
		func(ctx context.Context, mux *runtime.ServeMux) error {
			return usagev1.RegisterUsageServiceHandlerClient(ctx, mux, usagev1.NewUsageServiceClient(s.gwConn))
		},
		func(ctx context.Context, mux *runtime.ServeMux) error {
			return tenantsv1.RegisterTenantsServiceHandlerClient(ctx, mux, tenantsv1.NewTenantsServiceClient(s.gwConn))
		},
		func(ctx context.Context, mux *runtime.ServeMux) error {
			return tenantsv1.RegisterSignupServiceHandlerClient(ctx, mux, tenantsv1.NewSignupServiceClient(s.gwConn))
		},
		func(ctx context.Context, mux *runtime.ServeMux) error {
			return adminv1.RegisterAdminServiceHandlerClient(ctx, mux, adminv1.NewAdminServiceClient(s.gwConn))
		},
		func(ctx context.Context, mux *runtime.ServeMux) error {
			return billingv1.RegisterBillingServiceHandlerClient(ctx, mux, billingv1.NewBillingServiceClient(s.gwConn))
		},
	} {
		if err := register(ctx, s.gwMux); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	return nil
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg})
}
