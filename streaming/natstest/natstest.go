// Package natstest runs a real nats-server with JetStream inside a test, on
// a free loopback port with its store in a temporary directory. Tests can
// stop and restart it (same port, same data) to exercise outages.
package natstest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is a test NATS server.
type Server struct {
	t    testing.TB
	dir  string
	port int

	mu  sync.Mutex
	srv *server.Server
}

// Start runs a server and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, dir: t.TempDir(), port: FreePort(t)}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

// FreePort is a free loopback TCP port, picked at random below the
// kernel's ephemeral range (Linux: from 32768), so that no outgoing
// connection takes it between now and the server's bind, or while a test
// has the server stopped before restarting it on the same port. (A port
// from the ephemeral range was taken that way once in CI, under the full
// suite.)
func FreePort(t testing.TB) int {
	t.Helper()
	for range 200 {
		port := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			_ = l.Close()
			return port
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() {
	s.t.Helper()
	opts := &server.Options{
		ServerName: fmt.Sprintf("natstest-%d", s.port),
		Host:       "127.0.0.1",
		Port:       s.port,
		JetStream:  true,
		StoreDir:   s.dir,
		NoSigs:     true,
		NoLog:      true,
	}
	var srv *server.Server
	var err error
	// The port may linger briefly after a stop; retry for a moment.
	for i := 0; i < 50; i++ {
		if srv, err = server.NewServer(opts); err == nil {
			go srv.Start()
			if srv.ReadyForConnections(5 * time.Second) {
				break
			}
			srv.Shutdown()
			err = fmt.Errorf("nats-server not ready on port %d", s.port)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("natstest: %v", err)
	}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
}

// URL is the client URL.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

// Stop shuts the server down (idempotent).
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart starts the server again with the same port and data.
func (s *Server) Restart() {
	s.Stop()
	s.start()
}

// Resume starts a stopped server again with the same port and data.
func (s *Server) Resume() {
	if !s.Running() {
		s.start()
	}
}

// Running reports whether the server is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv != nil
}

// Connect opens a client connection (closed when the test ends) that
// reconnects forever, as kgentsd's does; opts come after those defaults.
func (s *Server) Connect(t testing.TB, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond), nats.RetryOnFailedConnect(true)}, opts...)
	nc, err := nats.Connect(s.URL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Consumers reports how many JetStream consumers the server holds over
// every stream (0 while it is stopped): reads must leave none behind.
func (s *Server) Consumers() int {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return 0
	}
	info, err := srv.Jsz(&server.JSzOptions{})
	if err != nil {
		s.t.Errorf("natstest: jsz: %v", err)
		return 0
	}
	return info.Consumers
}

// PauseJetStream turns JetStream off while the server and its client
// connections stay up: JetStream requests go unanswered, as during a leader
// election on a cluster. ResumeJetStream turns it back on with its store.
func (s *Server) PauseJetStream() {
	s.t.Helper()
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return
	}
	if err := srv.DisableJetStream(); err != nil {
		s.t.Fatalf("natstest: disable JetStream: %v", err)
	}
}

// ResumeJetStream turns JetStream on again after PauseJetStream.
func (s *Server) ResumeJetStream() {
	s.t.Helper()
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return
	}
	if err := srv.EnableJetStream(&server.JetStreamConfig{StoreDir: s.dir}); err != nil {
		s.t.Fatalf("natstest: enable JetStream: %v", err)
	}
}
