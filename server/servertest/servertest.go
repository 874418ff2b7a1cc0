// Package servertest starts a whole kgentsd in the test process: real gRPC
// and HTTP listeners on free loopback ports, embedded NATS in a temporary
// data directory (or none, or an external server), dev keys on. Tests talk
// to it exactly as clients would.
package servertest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/kgents/kgents-go/config"
	"github.com/kgents/kgents-go/server"
	"github.com/kgents/kgents-go/telemetry"
)

// Instance is a running kgentsd.
type Instance struct {
	Server *server.Server
	Config *config.Config
	// URL is the REST base URL, e.g. http://127.0.0.1:41234.
	URL string
	// Conn is a gRPC client connection to it.
	Conn *grpc.ClientConn
	Logs *SyncBuffer

	cancel  context.CancelFunc
	done    chan error
	stopped sync.Once
	err     error
}

// Defaults are the variables Start sets unless env overrides them.
func Defaults(t testing.TB) map[string]string {
	return map[string]string{
		"LISTEN_HOST":        "127.0.0.1",
		"HTTP_PORT":          "0",
		"GRPC_PORT":          "0",
		"KGENTS_DATA_DIR":    t.TempDir(),
		"NATS_EMBEDDED_PORT": "-1",
		"KGENTS_DEV_KEYS":    "true",
		"SHUTDOWN_DRAIN":     "0",
		"SHUTDOWN_TIMEOUT":   "10s",
		"LOG_LEVEL":          "debug",
	}
}

// Start runs kgentsd with Defaults overridden by env and stops it when the
// test ends. Its logs are printed if the test fails.
func Start(t testing.TB, env map[string]string) *Instance {
	t.Helper()
	return StartWith(t, env, server.Options{})
}

// StartWith is Start with server options (its Logger is replaced by the
// instance's log buffer).
func StartWith(t testing.TB, env map[string]string, o server.Options) *Instance {
	t.Helper()
	vars := Defaults(t)
	maps.Copy(vars, env)
	cfg, err := config.Load(config.MapLookup(vars))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	logs := &SyncBuffer{}
	log := telemetry.NewLogger(logs, "text", cfg.Log.Level)
	ctx, cancel := context.WithCancel(context.Background())
	o.Logger = log
	srv, err := server.New(ctx, cfg, o)
	if err != nil {
		cancel()
		t.Fatalf("server.New: %v\n%s", err, logs.String())
	}
	in := &Instance{Server: srv, Config: cfg, Logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { in.done <- srv.Serve(ctx) }()
	select {
	case <-srv.Ready():
	case err := <-in.done:
		t.Fatalf("Serve ended before ready: %v\n%s", err, logs.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("server not ready after 20s\n%s", logs.String())
	}
	in.URL = "http://" + srv.HTTPAddr().String()
	in.Conn, err = grpc.NewClient(srv.GRPCAddr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = in.Conn.Close()
		_ = in.Stop()
		if t.Failed() {
			t.Logf("kgentsd logs:\n%s", logs.String())
		}
	})
	return in
}

// Stop shuts the server down (SIGTERM's path) and returns Serve's result.
func (in *Instance) Stop() error {
	in.stopped.Do(func() {
		in.cancel()
		select {
		case in.err = <-in.done:
		case <-time.After(60 * time.Second):
			in.err = errors.New("server did not stop within 60s")
		}
	})
	return in.err
}

// StopAsync begins shutting down and returns a channel with Serve's result.
func (in *Instance) StopAsync() <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- in.Stop() }()
	return ch
}

// Key returns a context carrying an API key for gRPC calls.
func Key(ctx context.Context, key string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "x-api-key", key)
}

// Do sends a REST request with an optional API key and JSON body and returns
// the response with its body read.
func (in *Instance) Do(t testing.TB, method, path, key, body string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, in.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, b
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
