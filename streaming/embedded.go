package streaming

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startEmbedded runs an in-process nats-server with JetStream. It listens on
// loopback only: the server carries every tenant's dialogue, so it must never
// be reachable from outside the host. kgentsd itself talks to it in process,
// without a socket; the port is there for `nats sub` and for a second local
// kgentsd.
//
// Before anything else it locks the store directory (LockDir): a second
// process on the same store must refuse before it starts a server on it.
// The caller calls release after the server has shut down.
func startEmbedded(o Options, log *slog.Logger) (_ *server.Server, release func(), err error) {
	if o.StoreDir == "" {
		return nil, nil, fmt.Errorf("embedded NATS needs a store directory (KGENTS_DATA_DIR)")
	}
	if err := os.MkdirAll(o.StoreDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("embedded NATS store %s: %w", o.StoreDir, err)
	}
	release, err = LockDir(o.StoreDir)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded NATS store: %w: is another kgentsd running on this KGENTS_DATA_DIR?", err)
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	port := o.EmbeddedPort
	if port == 0 {
		port = 4223
	}
	opts := &server.Options{
		ServerName: "kgentsd-embedded",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Clean(o.StoreDir),
		// Bounded so an embedded server cannot take the host's memory.
		JetStreamMaxMemory: 256 << 20,
		NoSigs:             true,
		MaxPayload:         1 << 20,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded NATS: %w", err)
	}
	srv.SetLoggerV2(natsLogger{log: log.With("component", "nats-server")}, false, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(15 * time.Second) {
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, nil, fmt.Errorf("embedded NATS did not start on 127.0.0.1:%d (is the port taken? set NATS_EMBEDDED_PORT)", port)
	}
	log.Info("embedded NATS started", "url", srv.ClientURL(), "store", opts.StoreDir)
	return srv, release, nil
}

// natsLogger routes nats-server's log lines to slog. Notices are debug: the
// server is an implementation detail of kgentsd and chatty at start.
type natsLogger struct{ log *slog.Logger }

func (l natsLogger) Noticef(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l natsLogger) Warnf(format string, v ...any)   { l.log.Warn(fmt.Sprintf(format, v...)) }
func (l natsLogger) Fatalf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l natsLogger) Errorf(format string, v ...any)  { l.log.Error(fmt.Sprintf(format, v...)) }
func (l natsLogger) Debugf(format string, v ...any)  { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l natsLogger) Tracef(format string, v ...any)  {}
