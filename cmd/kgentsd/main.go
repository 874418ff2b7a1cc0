// Command kgentsd serves the kgents API: gRPC on GRPC_PORT and REST + SSE on
// HTTP_PORT. Configuration comes from the environment (docs/configuration.md).
// `kgentsd backup` and `kgentsd restore` back up and restore its NATS state
// (docs/operations.md).
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/google/uuid"

	"github.com/kgents/kgents-go/config"
	"github.com/kgents/kgents-go/server"
	"github.com/kgents/kgents-go/streaming"
	"github.com/kgents/kgents-go/telemetry"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// After the first signal, restore the default handling: a second one
	// kills the process instead of waiting for the drain.
	go func() { <-ctx.Done(); stop() }()
	// The UUIDs made here are ids (sessions, messages, turns, usage
	// events), not secrets (API keys read crypto/rand themselves): take
	// their randomness from crypto/rand in batches, not a getrandom call per
	// id (two per metered call, ~1 % of the CPU under load).
	uuid.EnableRandPool()
	if err := command(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr); err != nil {
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
	if limit := goMemoryLimit(cfg, lookup); limit > 0 {
		debug.SetMemoryLimit(limit)
		log.Info("Go memory limit set from KGENTS_MEMORY_LIMIT", "gomemlimit_bytes", limit, "container_limit_bytes", cfg.MemoryLimit)
	}
	if cfg.NATS.Enabled {
		// The data directory holds the embedded JetStream store and the
		// spool, which belong to one process: lock it before either is
		// opened (and before an embedded NATS server starts on the store).
		release, err := streaming.LockDir(cfg.DataDir)
		if err != nil {
			return fmt.Errorf("KGENTS_DATA_DIR %w; each kgentsd needs its own data directory", err)
		}
		defer release()
	}
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

// goMemoryLimit is the soft memory limit kgentsd gives the Go runtime:
// config.MemoryLimitShare of the container's limit (KGENTS_MEMORY_LIMIT), or
// 0 (leave it alone) when there is none or GOMEMLIMIT is set, which the
// runtime has applied already and which wins.
func goMemoryLimit(cfg *config.Config, lookup config.Lookup) int64 {
	if v, ok := lookup("GOMEMLIMIT"); ok && strings.TrimSpace(v) != "" {
		return 0
	}
	return int64(float64(cfg.MemoryLimit) * config.MemoryLimitShare)
}

func banner(cfg *config.Config, srv *server.Server) string {
	http := "http://" + hostPort(srv.HTTPAddr().String())
	b := fmt.Sprintf("\nkgentsd is ready\n  console     %s/console/\n  REST + SSE  %s   (OpenAPI: %s/openapi.json)\n  gRPC        %s\n  metrics     http://%s/metrics\n",
		http, http, http, hostPort(srv.GRPCAddr().String()), hostPort(srv.MetricsAddr().String()))
	if u := srv.NATSURL(); u != "" {
		b += fmt.Sprintf("  NATS        %s (embedded, loopback only)\n", u)
	}
	if cfg.Auth.DevKeys {
		if loopback(srv.HTTPAddr()) {
			b += "  Listening on loopback only (the public dev keys are on); LISTEN_HOST=0.0.0.0 exposes it.\n"
		} else {
			b += fmt.Sprintf("  WARNING: the public dev keys are on and kgentsd listens on %s: anyone who can reach it can use them.\n", srv.HTTPAddr())
		}
		b += fmt.Sprintf("\nTry it (dev keys are on):\n  curl -s -H 'X-API-Key: kg_dev_bob' -H 'Content-Type: application/json' \\\n    -d '{\"prompt\":\"What should I focus on this week?\",\"mode\":\"advise\"}' %s/v1/soul/dialogue\n\n", http)
	}
	return b
}

// loopback reports whether addr is bound to a loopback address only.
func loopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
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
