// Package server is kgentsd's process wiring: it builds the services and
// their dependencies, the gRPC server with its interceptor chain, the REST
// gateway with its SSE routes, health, metrics and tracing, and runs them
// until told to stop, then drains as SPEC §4.12 says. Everything is passed in
// through constructors here; there are no package-level singletons.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	goruntime "runtime"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/kgents/kgents-go/billing/lifecycle"
	"github.com/kgents/kgents-go/config"
	"github.com/kgents/kgents-go/controlplane"
	adminv1 "github.com/kgents/kgents-go/gen/kgents/admin/v1"
	agentesev1 "github.com/kgents/kgents-go/gen/kgents/agentese/v1"
	billingv1 "github.com/kgents/kgents-go/gen/kgents/billing/v1"
	sessionsv1 "github.com/kgents/kgents-go/gen/kgents/sessions/v1"
	soulv1 "github.com/kgents/kgents-go/gen/kgents/soul/v1"
	tenantsv1 "github.com/kgents/kgents-go/gen/kgents/tenants/v1"
	usagev1 "github.com/kgents/kgents-go/gen/kgents/usage/v1"
	"github.com/kgents/kgents-go/interceptors/auth"
	"github.com/kgents/kgents-go/interceptors/idempotency"
	"github.com/kgents/kgents-go/interceptors/metering"
	"github.com/kgents/kgents-go/quota"
	"github.com/kgents/kgents-go/sessionstore"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/telemetry"
	"github.com/kgents/kgents-go/tenancy"
)

// Server is a running kgentsd.
type Server struct {
	cfg     *config.Config
	opts    Options
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *httpMetrics
	tracing *telemetry.Tracing
	keyring *tenancy.Keyring
	nats    *streaming.Conn
	pub     *streaming.Publisher
	// sessionsJS is the JetStream session store (nil with NATS disabled),
	// made before the publisher: the publisher's replay settles the
	// store's refused writes through it (sessionstore.Resolver).
	sessionsJS *sessionstore.JetStream
	health     healthSources

	grpc       *grpc.Server
	grpcHealth *health.Server
	grpcLis    net.Listener
	// gwConn is the REST gateway's channel into the services (inproc.go).
	gwConn     grpc.ClientConnInterface
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
	// turnCutoff is closed shortly before the shutdown deadline: dialogue
	// turns still running end with an error event of type shutdown (their
	// partial replies stored and billed) instead of being cut.
	turnCutoff chan struct{}
	// authn authenticates API keys wherever the chain does not run (the
	// HTTP layer's own refusals): the control plane, which also serves the
	// key file and dev keys (set by newControlPlane).
	authn auth.Authenticator
	// turns is waited for at shutdown (set by buildServices).
	turns interface{ WaitTurns(context.Context) error }
	// closers run in reverse order once the servers have stopped.
	closers []func(context.Context) error
	// runners run in the background while serving (until shutdown).
	runners []runner
	bg      tasks
	bgStop  context.CancelFunc
	// billing is the Stripe lifecycle (server/billing.go).
	billing *lifecycle.Lifecycle
}

// healthSources are the components /health and /health/saas report on.
type healthSources struct {
	nats      HealthReporter
	openmeter HealthReporter
	engine    func() string
	// controlPlane is set by newControlPlane.
	controlPlane HealthReporter
	// stripe is set by newBilling.
	stripe HealthReporter
}

// Options carry what New cannot read from the configuration.
type Options struct {
	Logger *slog.Logger
	// EventClock stamps the time of usage events (nil: the wall clock).
	// Tests use it to spread traffic over a day; nothing else follows it.
	EventClock func() time.Time
}

// New builds the whole service and binds its listeners (so the ports are
// known and taken before Serve), but serves nothing yet.
func New(ctx context.Context, cfg *config.Config, o Options) (_ *Server, err error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:        cfg,
		opts:       o,
		log:        log,
		reg:        prometheus.NewRegistry(),
		ready:      make(chan struct{}),
		stopping:   make(chan struct{}),
		turnCutoff: make(chan struct{}),
	}
	defer func() {
		if err != nil {
			s.runClosers(context.Background())
		}
	}()
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// kgents_build_info marks a target as kgentsd: the dashboard joins the
	// runtime's go_* and process_* series to it on (job, instance), so it
	// works whatever the scrape job is called.
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "kgents_build_info",
		Help:        "Always 1; its labels name the kgentsd version and the Go release it was built with.",
		ConstLabels: prometheus.Labels{"version": cfg.Version, "go_version": goruntime.Version()},
	})
	buildInfo.Set(1)
	s.reg.MustRegister(buildInfo)
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
	var resolve func(context.Context, *streaming.Message, error) error
	if s.nats.Enabled() {
		s.sessionsJS = sessionstore.NewJetStream(s.nats.JetStream(), cfg.NATS.Replicas).FailFast(s.nats.Connected)
		resolve = s.sessionsJS.Resolver(log)
	}
	if s.pub, err = streaming.NewPublisher(s.nats, streaming.PublisherOptions{
		SpoolDir:   filepath.Join(cfg.DataDir, "spool"),
		Logger:     log,
		Registerer: s.reg,
		Tracer:     s.tracing.Provider,
		Resolve:    resolve,
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
		// The operators' /health/saas, with the detail the public one omits.
		mux.HandleFunc("GET /health/saas", s.handleHealthSaaSDetail)
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
	// controlPlane is the tenants/keys Manager and authenticator (SPEC §4.13).
	controlPlane *controlplane.Service
	// Self-service, sign-up and the operator API over it.
	tenants tenantsv1.TenantsServiceServer
	signup  tenantsv1.SignupServiceServer
	admin   adminv1.AdminServiceServer
	billing billingv1.BillingServiceServer
	// policy is the RPC policy table (methods.go), computed once.
	policy policyTable
	// What the chain's interceptors are built on (chain.go).
	limiter *quota.Limiter
	idem    idempotency.Store
	meter   *metering.Meter
}

// runner is a background loop and the name shutdown logs it by.
type runner struct {
	name string
	run  func(context.Context)
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
