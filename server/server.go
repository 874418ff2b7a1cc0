// Package server is kgentsd's process wiring: it builds the services and
// their dependencies, the gRPC server with its interceptor chain, the REST
// gateway with its SSE routes, health, metrics and tracing, and runs them
// until told to stop, then drains as SPEC §4.12 says. Everything is passed in
// through constructors here; there are no package-level singletons.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/kgents/kgents-go/agentese"
	"github.com/kgents/kgents-go/billing"
	"github.com/kgents/kgents-go/config"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
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
	"github.com/kgents/kgents-go/server/agentesesvc"
	"github.com/kgents/kgents-go/server/sessionsvc"
	"github.com/kgents/kgents-go/server/soulsvc"
	"github.com/kgents/kgents-go/server/usagesvc"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/soul"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/telemetry"
	"github.com/kgents/kgents-go/tenancy"
)

// Server is a running kgentsd.
type Server struct {
	cfg     *config.Config
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *httpMetrics
	tracing *telemetry.Tracing
	keyring *tenancy.Keyring
	nats    *streaming.Conn
	pub     *streaming.Publisher
	health  healthSources

	grpc       *grpc.Server
	grpcHealth *health.Server
	grpcLis    net.Listener
	inproc     *inprocListener
	gwConn     *grpc.ClientConn
	gwMux      *runtime.ServeMux
	http       *http.Server
	httpLis    net.Listener
	metricsSrv *http.Server
	metricsLis net.Listener

	started  atomic.Bool
	draining atomic.Bool
	ready    chan struct{}
	// stopping is closed when long-lived streams (watches) must end.
	stopping chan struct{}
	// closers run in reverse order once the servers have stopped.
	closers []func(context.Context) error
	// runners run in the background while serving (until shutdown).
	runners []func(context.Context)
	bg      sync.WaitGroup
	bgStop  context.CancelFunc
}

// healthSources are the components /health and /health/saas report on.
type healthSources struct {
	nats      HealthReporter
	openmeter HealthReporter
	engine    func() string
}

// Options carry what New cannot read from the configuration.
type Options struct {
	Logger *slog.Logger
}

// New builds the whole service and binds its listeners (so the ports are
// known and taken before Serve), but serves nothing yet.
func New(ctx context.Context, cfg *config.Config, o Options) (_ *Server, err error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:      cfg,
		log:      log,
		reg:      prometheus.NewRegistry(),
		ready:    make(chan struct{}),
		stopping: make(chan struct{}),
	}
	defer func() {
		if err != nil {
			s.runClosers(context.Background())
		}
	}()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s.metrics = newHTTPMetrics(s.reg)

	if s.tracing, err = telemetry.NewTracing(ctx, cfg.Telemetry.ServiceName, cfg.Version, cfg.Telemetry.OTLPEndpoint); err != nil {
		return nil, err
	}
	s.addCloser(s.tracing.Shutdown)

	tiers, err := tenancy.LoadTiers(cfg.Auth.TiersFile)
	if err != nil {
		return nil, err
	}
	if s.keyring, err = tenancy.NewKeyring(tenancy.KeyringOptions{
		Tiers: tiers, DevKeys: cfg.Auth.DevKeys, KeysFile: cfg.Auth.KeysFile, Logger: log,
	}); err != nil {
		return nil, err
	}
	if s.keyring.Size() == 0 {
		log.Warn("no API keys: set KGENTS_DEV_KEYS=true or KGENTS_API_KEYS_FILE; every tenant call will get 401")
	}

	if s.nats, err = streaming.Connect(ctx, streaming.Options{
		Enabled:        cfg.NATS.Enabled,
		Servers:        cfg.NATS.Servers,
		EmbeddedPort:   cfg.NATS.EmbeddedPort,
		StoreDir:       filepath.Join(cfg.DataDir, "jetstream"),
		Creds:          cfg.NATS.Creds,
		TLSCA:          cfg.NATS.TLSCA,
		TLSCert:        cfg.NATS.TLSCert,
		TLSKey:         cfg.NATS.TLSKey,
		ConnectTimeout: cfg.NATS.ConnectTimeout,
		Logger:         log,
	}); err != nil {
		return nil, err
	}
	s.addCloser(func(ctx context.Context) error { s.nats.Close(ctx); return nil })
	// Every JetStream write goes through one durable publisher (closed before
	// the connection: closers run in reverse).
	if s.pub, err = streaming.NewPublisher(s.nats, streaming.PublisherOptions{
		SpoolDir:   filepath.Join(cfg.DataDir, "spool"),
		Logger:     log,
		Registerer: s.reg,
		Tracer:     s.tracing.Provider,
	}); err != nil {
		return nil, fmt.Errorf("publisher: %w", err)
	}
	s.addCloser(s.pub.Close)
	s.health = healthSources{
		openmeter: disabledHealth,
	}

	svc, err := s.buildServices(ctx)
	if err != nil {
		return nil, err
	}

	if err := s.buildGRPC(svc); err != nil {
		return nil, err
	}
	if err := s.listen(); err != nil {
		return nil, err
	}
	if err := s.buildGateway(ctx); err != nil {
		return nil, err
	}
	s.http = &http.Server{
		Handler:           s.httpHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		// No WriteTimeout: SSE responses are long-lived; each SSE write sets
		// its own deadline instead.
		IdleTimeout:    120 * time.Second,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	if s.metricsLis != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", s.metricsHandler())
		if cfg.Pprof {
			mountPprof(mux)
		}
		s.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	return s, nil
}

// services are the implementations registered on the gRPC server.
type services struct {
	sessions sessionsv1.SessionsServiceServer
	soul     soulv1.SoulServiceServer
	agentese agentesev1.AgenteseServiceServer
	usage    usagev1.UsageServiceServer
	// invokeScope decides an AGENTESE invocation's scope (see methods.go).
	invokeScope func(req any) (tenancy.Scope, string)
	// extra interceptors supplied by the services' layers.
	parts chainParts
}

func (s *Server) buildServices(ctx context.Context) (*services, error) {
	cfg := s.cfg
	engine, err := s.buildEngine()
	if err != nil {
		return nil, err
	}
	s.health.engine = engine.Name
	soulSvc := soulsvc.New(engine, soul.NewGovernor(engine))
	agSvc := agentesesvc.New(agentese.DefaultRegistry(soulSvc), agentesesvc.WithLogger(s.log))

	var (
		store   sessionstore.Store
		idem    idempotency.Store
		history *streaming.History
	)
	hub := streaming.NewHub(s.nats, streaming.HubOptions{Logger: s.log, Registerer: s.reg, Tracer: s.tracing.Provider})
	s.health.nats = natsHealth(s.nats, s.pub, hub)
	if s.nats.Enabled() {
		history = streaming.NewHistory(s.nats.JetStream(), s.tracing.Provider)
		jsStore := sessionstore.NewJetStream(s.nats.JetStream(), cfg.NATS.Replicas).FailFast(s.nats.Connected)
		jsIdem := idempotency.NewJetStream(s.nats.JetStream(), cfg.NATS.Replicas, cfg.Sessions.IdempotencyTTL).FailFast(s.nats.Connected)
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
			for _, e := range []func(context.Context) error{jsStore.EnsureResources, jsIdem.EnsureResources, events, metering} {
				if err := e(ctx); err != nil {
					s.log.Warn("JetStream resources not ready; retrying on next use", "error", err)
				}
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

	sessions := sessionsvc.New(sessionsvc.Options{
		Store:             store,
		Engine:            engine,
		Replica:           cfg.Sessions.Replica,
		TurnTimeout:       cfg.Sessions.TurnTimeout,
		Watch:             watchAdapter{hub: hub, history: history},
		Stopping:          s.stopping,
		WatchersPerTenant: cfg.Sessions.WatchersPerTenant,
		Logger:            s.log,
	})
	var idempotent, sessionScoped []string
	for m, p := range policies(nil) {
		if p.idempotent {
			idempotent = append(idempotent, m)
		}
		if p.sessionScoped {
			sessionScoped = append(sessionScoped, m)
		}
	}
	var counters quota.Counters = quota.NewMemory()
	if s.nats.Enabled() {
		kv := quota.NewKV(s.nats.JetStream(), quota.KVOptions{Replicas: cfg.NATS.Replicas, Logger: s.log, Registerer: s.reg, Connected: s.nats.Connected})
		s.background(kv.Run)
		counters = kv
	}
	limiter := quota.NewLimiter(counters, nil)

	svc := &services{
		sessions:    sessions,
		soul:        soulSvc,
		agentese:    agSvc,
		usage:       usagesvc.New(limiter),
		invokeScope: agSvc.InvokeScope,
	}
	svc.parts.idempotency = idempotency.New(idem, idempotent, cfg.Sessions.TurnTimeout+time.Minute, s.log)
	svc.parts.quota = quotaic.New(limiter)
	// Usage events are built off the request path; the closer (run after
	// the servers stop, before the publisher closes: closers run in
	// reverse) drains what is queued.
	meter := metering.New(s.usageEvents(), s.log, s.reg).Async(meteringQueue)
	s.addCloser(meter.Close)
	svc.parts.metering = meter
	if err := s.buildOpenMeterSink(); err != nil {
		return nil, err
	}
	var eventPub fanout.MessagePublisher
	if s.nats.Enabled() {
		eventPub = s.pub
	}
	sink := fanout.NewPublisher(hub, eventPub, s.tracing.Provider, s.log, s.reg)
	svc.parts.fanout = fanout.New(sink, sessionScoped)
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
		s.background(func(ctx context.Context) {
			if err := proc.Run(ctx); err != nil {
				s.log.Error("OpenMeter sink stopped", "error", err)
			}
		})
	}
	return nil
}

// meteringQueue is how many finished calls may wait for their usage events
// to be built (beyond it, callers build their own: slower, never lost).
const meteringQueue = 4096

// watchAdapter gives the Sessions service its view of streaming.
type watchAdapter struct {
	hub     *streaming.Hub
	history *streaming.History
}

func (w watchAdapter) Subscribe(sessionID string) sessionsvc.Feed { return w.hub.Subscribe(sessionID) }

func (w watchAdapter) Replay(ctx context.Context, sessionID string, after uint64, onReset func() error, deliver func(*sessionsv1.SessionEvent) error) error {
	_, _, err := w.history.Replay(ctx, sessionID, after, onReset, deliver)
	if errors.Is(err, streaming.ErrNoHistory) {
		return fmt.Errorf("%w: %w", sessionsvc.ErrNoHistory, err)
	}
	return err
}

// usageEvents is where metering sends usage events: the kgent-metering
// stream, through the durable publisher (the spool while NATS is away).
func (s *Server) usageEvents() metering.Emitter {
	if !s.nats.Enabled() {
		return discardEvents{} // no stream to keep them in
	}
	return &meteringOutbox{pub: s.pub, log: s.log}
}

// discardEvents drops usage events (NATS_ENABLED=false: tests, experiments).
type discardEvents struct{}

func (discardEvents) Emit(event.Event) {}

// meteringOutbox publishes usage events, each with its CloudEvents id as
// the Nats-Msg-Id so the stream stores a retried event once.
type meteringOutbox struct {
	pub *streaming.Publisher
	log *slog.Logger
}

func (o *meteringOutbox) Emit(ev event.Event) {
	data, err := billing.Marshal(ev)
	if err != nil {
		o.log.Error("usage event not encodable", "type", ev.Type(), "error", err)
		return
	}
	o.pub.Publish(streaming.Message{Subject: billing.EventSubject(ev.Type()), Data: data, MsgID: ev.ID()})
}

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
	)
	if err != nil {
		return fmt.Errorf("protovalidate: %w", err)
	}
	grpcMetrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
	))
	s.reg.MustRegister(grpcMetrics)

	parts := svc.parts
	parts.logging = logging.New(s.log, func(service string) bool {
		for _, p := range publicServices {
			if p == service {
				return true
			}
		}
		return false
	})
	parts.metrics = grpcMetrics
	parts.auth = auth.New(s.keyring, authRules(policies(svc.invokeScope)))
	parts.validate = validator
	parts.statuserr = statuserr.New(s.log)
	parts.recovery = recovery.New(s.log, s.reg)
	unary, stream := parts.chain()

	s.grpc = grpc.NewServer(
		grpc.StatsHandler(otelgrpc.NewServerHandler(
			otelgrpc.WithTracerProvider(s.tracing.Provider),
			otelgrpc.WithPropagators(s.tracing.Propagator),
			otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
		)),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		// Watchers are streams: never cap them per connection (the gateway
		// multiplexes every REST watcher on one connection).
		grpc.MaxConcurrentStreams(math.MaxUint32),
		grpc.MaxRecvMsgSize(4<<20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	sessionsv1.RegisterSessionsServiceServer(s.grpc, svc.sessions)
	soulv1.RegisterSoulServiceServer(s.grpc, svc.soul)
	agentesev1.RegisterAgenteseServiceServer(s.grpc, svc.agentese)
	usagev1.RegisterUsageServiceServer(s.grpc, svc.usage)
	s.grpcHealth = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.grpcHealth)
	reflection.Register(s.grpc)
	grpcMetrics.InitializeMetrics(s.grpc)
	// NOT_SERVING until Serve has everything running.
	s.setServing(healthpb.HealthCheckResponse_NOT_SERVING)
	return nil
}

// setServing sets the overall status and each service's.
func (s *Server) setServing(st healthpb.HealthCheckResponse_ServingStatus) {
	s.grpcHealth.SetServingStatus("", st)
	for name := range s.grpc.GetServiceInfo() {
		s.grpcHealth.SetServingStatus(name, st)
	}
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
	s.inproc = newInprocListener()
	return nil
}

func (s *Server) buildGateway(ctx context.Context) error {
	conn, err := grpc.NewClient("passthrough:///kgents-inproc",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return s.inproc.Dial(ctx) }),
		grpc.WithChainUnaryInterceptor(markReachedUnary),
		grpc.WithChainStreamInterceptor(markReachedStream),
		// Big windows: the server's sends to SSE watchers must not wait on
		// flow control of one shared connection.
		grpc.WithInitialWindowSize(1<<20),
		grpc.WithInitialConnWindowSize(16<<20),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
	)
	if err != nil {
		return fmt.Errorf("gateway connection: %w", err)
	}
	s.gwConn = conn
	s.addCloser(func(context.Context) error { return conn.Close() })
	s.gwMux = s.newGatewayMux()
	for _, register := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		sessionsv1.RegisterSessionsServiceHandler,
		soulv1.RegisterSoulServiceHandler,
		agentesev1.RegisterAgenteseServiceHandler,
		usagev1.RegisterUsageServiceHandler,
	} {
		if err := register(ctx, s.gwMux, conn); err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
	}
	return nil
}

func (s *Server) metricsHandler() http.Handler {
	return promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg})
}

func (s *Server) addCloser(fn func(context.Context) error) { s.closers = append(s.closers, fn) }

// background registers fn to run from Serve until the servers have stopped.
func (s *Server) background(fn func(context.Context)) { s.runners = append(s.runners, fn) }

func (s *Server) runClosers(ctx context.Context) {
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](ctx); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Warn("shutdown step failed", "error", err)
		}
	}
	s.closers = nil
}

// HTTPAddr is where REST listens.
func (s *Server) HTTPAddr() net.Addr { return s.httpLis.Addr() }

// GRPCAddr is where gRPC listens.
func (s *Server) GRPCAddr() net.Addr { return s.grpcLis.Addr() }

// MetricsAddr is where /metrics is served (the HTTP address unless METRICS_PORT is set).
func (s *Server) MetricsAddr() net.Addr {
	if s.metricsLis != nil {
		return s.metricsLis.Addr()
	}
	return s.httpLis.Addr()
}

// NATSURL is the embedded NATS server's URL ("" otherwise).
func (s *Server) NATSURL() string { return s.nats.ClientURL() }

// Ready is closed once Serve is serving.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// ReloadKeys re-reads the API key file (SIGHUP).
func (s *Server) ReloadKeys() error { return s.keyring.Reload() }

// Serve runs until ctx is done, then shuts down gracefully: readiness and
// gRPC health go NOT_SERVING, it waits SHUTDOWN_DRAIN for load balancers to
// notice, ends watch streams, stops HTTP (letting in-flight requests and
// turns finish), stops gRPC gracefully, forcing it at SHUTDOWN_TIMEOUT
// counted from the signal, then flushes and closes everything. It returns
// nil after a clean shutdown, or the error that stopped a server early.
func (s *Server) Serve(ctx context.Context) error {
	bgCtx, bgStop := context.WithCancel(context.Background())
	s.bgStop = bgStop
	errs := make(chan error, 4)
	serve := func(name string, fn func() error) {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			if err := fn(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, net.ErrClosed) {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	serve("grpc", func() error { return s.grpc.Serve(s.grpcLis) })
	serve("grpc-inproc", func() error { return s.grpc.Serve(s.inproc) })
	serve("http", func() error { return s.http.Serve(s.httpLis) })
	if s.metricsSrv != nil {
		serve("metrics", func() error { return s.metricsSrv.Serve(s.metricsLis) })
	}
	s.background(func(ctx context.Context) { s.keyring.Watch(ctx, s.cfg.Auth.KeysReload) })
	for _, run := range s.runners {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			run(bgCtx)
		}()
	}

	s.setServing(healthpb.HealthCheckResponse_SERVING)
	s.started.Store(true)
	close(s.ready)
	s.log.Info("kgentsd ready", "http", s.HTTPAddr().String(), "grpc", s.GRPCAddr().String(),
		"metrics", s.MetricsAddr().String(), "nats", string(s.nats.Mode()), "nats_url", s.NATSURL())

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errs:
		s.log.Error("server failed; shutting down", "error", serveErr)
	}
	s.shutdown()
	return serveErr
}

// shutdown is SPEC §4.12's sequence.
func (s *Server) shutdown() {
	begun := time.Now()
	deadline := begun.Add(s.cfg.Shutdown.Timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	log := s.log.With("phase", "shutdown")

	s.draining.Store(true)
	s.grpcHealth.Shutdown() // every service NOT_SERVING, for good
	log.Info("draining: readiness is false", "drain", s.cfg.Shutdown.Drain, "timeout", s.cfg.Shutdown.Timeout)
	select {
	case <-time.After(s.cfg.Shutdown.Drain):
	case <-ctx.Done():
	}

	// Watch streams end now (watchers get an end event and reconnect to
	// another replica with Last-Event-ID); dialogue turns run on.
	close(s.stopping)
	if err := s.http.Shutdown(ctx); err != nil {
		log.Warn("HTTP did not drain in time; closing connections", "error", err)
		_ = s.http.Close()
	}
	if s.metricsSrv != nil {
		_ = s.metricsSrv.Shutdown(ctx)
	}

	stopped := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
		log.Warn("gRPC did not drain in time; forcing")
		s.grpc.Stop()
		<-stopped
	}
	s.bgStop()
	s.bg.Wait()

	// Flush and close what the servers used, with whatever time is left
	// (at least a moment, so a forced stop still flushes what it can).
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), max(time.Until(deadline), 2*time.Second))
	defer cancelFlush()
	s.runClosers(flushCtx)
	log.Info("stopped", "took", time.Since(begun).Round(time.Millisecond))
}

// Stopping is closed when long-lived streams must end.
func (s *Server) Stopping() <-chan struct{} { return s.stopping }
