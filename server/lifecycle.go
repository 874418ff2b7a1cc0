package server

// Lifecycle: serving, the background tasks, and the shutdown of SPEC §4.12.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// setServing sets the overall status and each service's.
func (s *Server) setServing(st healthpb.HealthCheckResponse_ServingStatus) {
	s.grpcHealth.SetServingStatus("", st)
	for name := range s.grpc.GetServiceInfo() {
		s.grpcHealth.SetServingStatus(name, st)
	}
}

func (s *Server) addCloser(fn func(context.Context) error) { s.closers = append(s.closers, fn) }

// background registers fn to run from Serve until the servers have stopped.
func (s *Server) background(name string, fn func(context.Context)) {
	s.runners = append(s.runners, runner{name, fn})
}

func (s *Server) runClosers(ctx context.Context) {
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](ctx); err != nil && !errors.Is(err, net.ErrClosed) {
			s.log.Warn("shutdown step failed", "error", err)
		}
	}
	s.closers = nil
}

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
		s.bg.Go(name, func() {
			if err := fn(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) && !errors.Is(err, net.ErrClosed) {
				errs <- fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	serve("grpc", func() error { return s.grpc.Serve(s.grpcLis) })
	serve("http", func() error { return s.http.Serve(s.httpLis) })
	if s.metricsSrv != nil {
		serve("metrics", func() error { return s.metricsSrv.Serve(s.metricsLis) })
	}
	s.background("api-key-reload", func(ctx context.Context) { s.keyring.Watch(ctx, s.cfg.Auth.KeysReload) })
	for _, r := range s.runners {
		s.bg.Go(r.name, func() { r.run(bgCtx) })
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
	timeout := s.cfg.Shutdown.Timeout
	deadline := begun.Add(timeout)
	// The serving phases end early enough to leave the flush its reserve:
	// the whole sequence fits inside SHUTDOWN_TIMEOUT (operations.md).
	stopBy := deadline.Add(-flushReserve(timeout))
	ctx, cancel := context.WithDeadline(context.Background(), stopBy)
	defer cancel()
	log := s.log.With("phase", "shutdown")

	s.draining.Store(true)
	s.grpcHealth.Shutdown() // every service NOT_SERVING, for good
	log.Info("draining: readiness is false", "drain", s.cfg.Shutdown.Drain, "timeout", timeout)
	select {
	case <-time.After(s.cfg.Shutdown.Drain):
	case <-ctx.Done():
	}

	// Watch streams end now (watchers get an end event and reconnect to
	// another replica with Last-Event-ID); dialogue turns run on until the
	// cutoff, a moment before the stop deadline, leaves them time to store
	// what they produced and end their streams with an error event.
	close(s.stopping)
	cutoff := time.AfterFunc(time.Until(stopBy.Add(-turnCutoffMargin(timeout))), func() { close(s.turnCutoff) })
	defer cutoff.Stop()
	if err := s.http.Shutdown(ctx); err != nil {
		log.Warn("HTTP did not drain in time; closing connections", "error", err)
		_ = s.http.Close()
	}
	if s.metricsSrv != nil {
		if err := s.metricsSrv.Shutdown(ctx); err != nil {
			_ = s.metricsSrv.Close()
		}
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
		s.grpc.Stop() // closes every connection and returns without waiting for handlers
		<-stopped
	}
	// Cut turns store their replies on their own context; wait for them.
	if s.turns != nil {
		if err := s.turns.WaitTurns(ctx); err != nil {
			log.Warn("turns still storing at the stop deadline", "error", err)
		}
	}
	s.bgStop()
	if left := s.bg.wait(ctx); len(left) > 0 {
		// They were told to stop (their context is cancelled); waiting
		// longer would take the flush's time. They end with the process.
		log.Warn("background tasks still running at the stop deadline; not waiting for them", "tasks", left)
	}

	// Flush and close what the servers used, by the final deadline (at
	// least the reserve, more when the servers stopped early).
	flushCtx, cancelFlush := context.WithDeadline(context.Background(), deadline)
	defer cancelFlush()
	s.runClosers(flushCtx)
	log.Info("stopped", "took", time.Since(begun).Round(time.Millisecond))
}

// flushReserve is the part of SHUTDOWN_TIMEOUT kept for the flush (the
// metering queue, the publisher and its spool, NATS, traces) however long
// the servers take to stop. Measured, the flush after a loaded stop takes
// tens of milliseconds (operations.md); the reserve covers slow disks.
func flushReserve(timeout time.Duration) time.Duration {
	return min(2*time.Second, timeout/5)
}

// turnCutoffMargin is how long before the stop deadline running turns are
// cut: enough to store a reply and end a stream.
func turnCutoffMargin(timeout time.Duration) time.Duration {
	return min(3*time.Second, timeout/4)
}

// Stopping is closed when long-lived streams must end.
func (s *Server) Stopping() <-chan struct{} { return s.stopping }
