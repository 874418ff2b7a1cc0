// Command kgentsd serves the kgents API: gRPC on GRPC_PORT and REST + SSE on
// HTTP_PORT. Configuration comes from the environment (docs/configuration.md).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/kgents/kgents-go/config"
	"github.com/kgents/kgents-go/server"
	"github.com/kgents/kgents-go/telemetry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal, restore the default handling: a second one
	// kills the process instead of waiting for the drain.
	go func() { <-ctx.Done(); stop() }()
	if err := run(ctx, os.LookupEnv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "kgentsd:", err)
		os.Exit(1)
	}
}

// run starts kgentsd with the configuration lookup finds, logs to logw,
// prints the start banner to out, and returns after a graceful shutdown.
func run(ctx context.Context, lookup config.Lookup, out, logw io.Writer) error {
	cfg, err := config.Load(lookup)
	if err != nil {
		return fmt.Errorf("configuration:\n%w", err)
	}
	log := telemetry.NewLogger(logw, cfg.Log.Format, cfg.Log.Level)
	srv, err := server.New(ctx, cfg, server.Options{Logger: log})
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				if err := srv.ReloadKeys(); err != nil {
					log.Error("API key reload failed; keeping the previous keys", "error", err)
				} else {
					log.Info("API keys reloaded")
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() {
		select {
		case <-srv.Ready():
			_, _ = fmt.Fprint(out, banner(cfg, srv))
		case <-ctx.Done():
		}
	}()
	return srv.Serve(ctx)
}

func banner(cfg *config.Config, srv *server.Server) string {
	http := "http://" + hostPort(srv.HTTPAddr().String())
	b := fmt.Sprintf("\nkgentsd is ready\n  REST + SSE  %s   (OpenAPI: %s/openapi.json)\n  gRPC        %s\n  metrics     http://%s/metrics\n",
		http, http, hostPort(srv.GRPCAddr().String()), hostPort(srv.MetricsAddr().String()))
	if u := srv.NATSURL(); u != "" {
		b += fmt.Sprintf("  NATS        %s (embedded, loopback only)\n", u)
	}
	if cfg.Auth.DevKeys {
		b += fmt.Sprintf("\nTry it (dev keys are on):\n  curl -s -H 'X-API-Key: kg_dev_bob' -H 'Content-Type: application/json' \\\n    -d '{\"prompt\":\"What should I focus on this week?\",\"mode\":\"advise\"}' %s/v1/soul/dialogue\n\n", http)
	}
	return b
}

// hostPort turns a wildcard listen address into one a browser can open.
func hostPort(addr string) string {
	if len(addr) > 8 && addr[:8] == "0.0.0.0:" {
		return "localhost:" + addr[8:]
	}
	if len(addr) > 5 && addr[:5] == "[::]:" {
		return "localhost:" + addr[5:]
	}
	return addr
}
